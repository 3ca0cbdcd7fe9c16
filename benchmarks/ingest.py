"""Benchmark: how fast the DICOM node takes a study in, next to Orthanc, on this machine.

dcmtk's storescu pushes the same synthetic study (a ``--size full`` patient by default, about
220 instances; ``--copies K`` multiplies it with re-UIDed copies) to our node (``NodeServer``
in this process, a fresh storage root and SQLite database each round) and to a loopback Orthanc
(``shared/tools/orthanc-up.sh``, a fresh one each round). Each round times storescu's wall clock
from start to exit (association, every C-STORE, release); the median of ``--rounds`` is
reported as instances/s for both and the ratio ours/Orthanc (target: ≥ 1). Both targets count
what they stored, so a fast but lossy run shows. It asserts nothing.

Two network set-ups, both by default (``--setup``): "tuned", where storescu and Orthanc (both
dcmtk) run with ``TCP_NODELAY=1``, and "shipped", dcmtk's default as packaged, Nagle's
algorithm on: there an Orthanc response waits for a delayed ACK (~40 ms on loopback) per
instance. Our node always turns Nagle off on its side.

    python benchmarks/ingest.py [--size full] [--copies 1] [--rounds 3] [--setup both] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.synth import write_synthetic_patients
from service.config import NodePeer, Settings
from service.db.engine import Database
from service.db.models import NodeInstance
from service.node.server import NodeServer

ORTHANC_UP = Path(__file__).resolve().parent.parent.parent / "shared" / "tools" / "orthanc-up.sh"
CALLING_AE = "BENCH"
TARGET_RATIO = 1.0
#: What storescu and Orthanc get in their environment: dcmtk reads TCP_NODELAY.
SETUPS: dict[str, dict[str, str]] = {"tuned": {"TCP_NODELAY": "1"}, "shipped": {}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["small", "full"], default="full")
    parser.add_argument("--copies", type=int, default=1, help="the study K times, re-UIDed (default 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=9100)
    parser.add_argument("--setup", choices=["both", *SETUPS], default="both", help="network set-up(s)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the study and the stores here")
    args = parser.parse_args()
    for tool in ("storescu", "Orthanc"):
        if _system_tool(tool) is None:
            say(f"{tool} is not installed (.ci/run installs it)")
            return 2
    logging.basicConfig(level=logging.WARNING)
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="rtinjury-ingest-"))
    try:
        study = _study(scratch / "study", args.size, args.copies, args.seed)
        files = sorted(study.rglob("*.dcm"))
        size = sum(path.stat().st_size for path in files)
        say(f"study: size {args.size} x {args.copies}: {len(files)} instances, {size / 1e6:.1f} MB")
        _warm_page_cache(files)
        setups = list(SETUPS) if args.setup == "both" else [args.setup]
        results = {setup: _rounds(study, scratch / setup, setup, args.rounds, len(files)) for setup in setups}
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    for setup, (ours, theirs) in results.items():
        _report(setup, len(files), size, ours, theirs)
    return 0


def _rounds(study: Path, scratch: Path, setup: str, rounds: int, expected: int) -> tuple[float, float]:
    """Median storescu wall times (ours, Orthanc) over ``rounds`` alternating pushes."""
    env = {key: value for key, value in os.environ.items() if key != "TCP_NODELAY"} | SETUPS[setup]
    ours, theirs = [], []
    for round_ in range(rounds):
        ours.append(_push_to_node(study, scratch / f"node-{round_}", env, expected))
        theirs.append(_push_to_orthanc(study, scratch / f"orthanc-{round_}", env, expected))
        say(f"{setup} round {round_ + 1}: ours {ours[-1]:.2f} s, Orthanc {theirs[-1]:.2f} s")
    return statistics.median(ours), statistics.median(theirs)


def _study(folder: Path, size: str, copies: int, seed: int) -> Path:
    """The synthetic patient, plus ``copies - 1`` copies with new study/series/instance UIDs."""
    patient = write_synthetic_patients(folder / "original", task="orn", cases=1, seed=seed, size=size)[0]
    # The ground-truth SEG is not something a PACS would push; leave it out.
    shutil.rmtree(patient / "ground_truth", ignore_errors=True)
    for copy in range(1, copies):
        _reuid_copy(patient, folder / f"copy-{copy}")
    return folder


def _reuid_copy(patient: Path, target: Path) -> None:
    study_uid = generate_uid()
    series_uids: dict[str, str] = {}
    for source in sorted(patient.rglob("*.dcm")):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uids.setdefault(str(ds.SeriesInstanceUID), generate_uid())
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = target / source.relative_to(patient)
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out, enforce_file_format=True)


def _warm_page_cache(files: list[Path]) -> None:
    """Read every file once, so neither target pays for the first (cold) read."""
    for path in files:
        path.read_bytes()


def _push_to_node(study: Path, root: Path, env: dict[str, str], expected: int) -> float:
    settings = Settings(
        storage_root=root,
        node_peers=[NodePeer(ae_title=CALLING_AE, host="127.0.0.1")],
        node_min_free_bytes=0,
    ).model_copy(update={"node_port": 0})
    database = Database(settings.sqlalchemy_url)
    node = NodeServer(settings, database)
    node.start()
    try:
        host, port = node.address
        seconds = _storescu(study, settings.node_ae_title, host, port, env)
    finally:
        node.stop()
    with database.session() as session:
        accepted = select(func.count()).select_from(NodeInstance).where(NodeInstance.state == "accepted")
        stored = int(session.scalar(accepted) or 0)
    database.dispose()
    _check_count("our node", stored, expected)
    return seconds


def _push_to_orthanc(study: Path, workdir: Path, env: dict[str, str], expected: int) -> float:
    dicom_port, http_port = _free_port(), _free_port()
    subprocess.run(
        ["bash", str(ORTHANC_UP), str(workdir), str(dicom_port), str(http_port)],
        check=True,
        env=env,  # Orthanc's dcmtk reads TCP_NODELAY too
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        seconds = _storescu(study, "ORTHANC", "127.0.0.1", dicom_port, env)
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/statistics", timeout=30) as answer:
            stored = int(json.load(answer)["CountInstances"])
    finally:
        subprocess.run(
            ["bash", str(ORTHANC_UP), "--stop", str(workdir)], check=False, stderr=subprocess.DEVNULL
        )
    _check_count("Orthanc", stored, expected)
    return seconds


def _system_tool(name: str) -> str | None:
    """dcmtk's tool, not pynetdicom's same-named script in this virtual environment's bin."""
    venv_bin = Path(sys.executable).parent.resolve()
    folders = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != venv_bin]
    return shutil.which(name, path=os.pathsep.join(folders))


def _storescu(study: Path, called_ae: str, host: str, port: int, env: dict[str, str]) -> float:
    command = [
        str(_system_tool("storescu")),
        "-R",
        "+sd",
        "+r",
        "+sp",
        "*.dcm",
        "-aet",
        CALLING_AE,
        "-aec",
        called_ae,
    ]
    command += [host, str(port), str(study)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=3600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        say(f"storescu to {called_ae} failed ({result.returncode}): {result.stderr.strip()[-300:]}")
    return seconds


def _check_count(target: str, stored: int, expected: int) -> None:
    if stored != expected:
        say(f"  WARNING: {target} stored {stored} of {expected} instances")


def _report(setup: str, instances: int, size: int, ours: float, theirs: float) -> None:
    say(f"\n{setup}: median storescu wall time, {instances} instances:")
    for name, seconds in (("ours", ours), ("Orthanc", theirs)):
        rate = instances / seconds
        say(f"  {name:<8} {seconds:7.2f} s  {rate:8.1f} instances/s  {size / seconds / 1e6:7.1f} MB/s")
    ratio = theirs / ours
    met = "met" if ratio >= TARGET_RATIO else "NOT met"
    say(f"ratio ours/Orthanc (instances/s): {ratio:.2f} (target ≥ {TARGET_RATIO:g}: {met})")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
