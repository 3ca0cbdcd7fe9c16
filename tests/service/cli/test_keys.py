"""``rtinjury keys``: a new key and its hash line agree, and the server accepts the key."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

from tests.service.cli.runner import rtinjury


def test_new_prints_a_key_and_its_hash_line() -> None:
    result = rtinjury("keys", "new")
    assert result.returncode == 0, result.stderr
    key = re.search(r"^key:\s+(\S+)$", result.stdout, re.M)
    line = re.search(r"^hash:\s+(sha256:[0-9a-f]{64})$", result.stdout, re.M)
    assert key and line
    assert len(key.group(1)) >= 43
    assert line.group(1) == "sha256:" + hashlib.sha256(key.group(1).encode()).hexdigest()
    assert "RTINJURY_API_KEY_HASHES" in result.stdout


def test_new_as_json_and_every_key_is_different() -> None:
    first, second = (json.loads(rtinjury("keys", "new", "--json").stdout) for _ in range(2))
    assert first["key"] != second["key"]
    assert first["hash"] == "sha256:" + hashlib.sha256(first["key"].encode()).hexdigest()
    assert first["owner"] == first["hash"][7:19]


def test_hash_reads_the_key_from_stdin() -> None:
    result = _keys_hash("my-key-from-a-password-manager\n")
    expected = "sha256:" + hashlib.sha256(b"my-key-from-a-password-manager").hexdigest()
    assert result.returncode == 0 and result.stdout.strip() == expected


def test_hash_of_nothing_is_an_error_line() -> None:
    result = _keys_hash("")
    assert result.returncode == 2
    assert result.stderr.startswith("rtinjury: error: no key on stdin") and "Traceback" not in result.stderr


def _keys_hash(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli.main", "keys", "hash"],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_new_with_scopes_prints_the_line_the_server_takes(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.main import create_app

    result = rtinjury("keys", "new", "--scopes", "read,submit")
    assert result.returncode == 0, result.stderr
    key = re.search(r"^key:\s+(\S+)$", result.stdout, re.M)
    line = re.search(r"^line:\s+(sha256:[0-9a-f]{64};scopes=submit,read)$", result.stdout, re.M)
    assert key and line, result.stdout
    assert f"""RTINJURY_API_KEY_HASHES='["{line.group(1)}"]'""" in result.stdout

    settings = Settings(storage_root=tmp_path, api_key_hashes=[line.group(1)])
    auth = {"Authorization": f"Bearer {key.group(1)}"}
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers=auth).status_code == 200
        assert client.get("/v1/studies", headers=auth).status_code == 403


def test_new_without_scopes_is_the_bare_hash_and_json_names_them() -> None:
    made = json.loads(rtinjury("keys", "new", "--json").stdout)
    assert made["line"] == made["hash"] and made["scopes"] == ["submit", "read", "admin"]
    admin = json.loads(rtinjury("keys", "new", "--scopes", "admin", "--json").stdout)
    assert admin["line"] == f"{admin['hash']};scopes=admin" and admin["scopes"] == ["admin"]


def test_new_with_an_unknown_scope_is_a_usage_error() -> None:
    result = rtinjury("keys", "new", "--scopes", "read,everything")
    assert result.returncode == 2
    assert "unknown scope(s) everything" in result.stderr and "Traceback" not in result.stderr
