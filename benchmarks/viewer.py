"""Benchmark: how fast the web viewer shows a job's first slice, in headless Chromium on loopback.

Issue 11's target: the job page of a 512×512×150 CT follow-up shows its first axial slice within
1 s. A synthetic ORN patient whose follow-up is rendered on that grid (the synthetic sizes stop
at 256×240×120) runs to success through a real ``rtinjury serve`` (embedded worker); then the
job page is opened N times, each in a fresh browser context (logged in, empty cache). The first
opening meets a server that has not read the job yet (its view cache is cold); the others are
warm. Measured in the page: from navigation start (``performance.now()``'s origin) to the frame
after the axial ``img.layer-image`` has loaded (``data-loaded`` set, ``naturalWidth`` > 0). The
reference, measured the same way in the same run, is the login page (navigation start to the
frame after DOMContentLoaded): the ratio job page / login page is what the viewer costs over a
bare page. The server's share of the cold opening, the first ``GET /v1/jobs/{id}/view``
(request sent → first byte, from the browser's timing), is reported separately. It asserts
nothing; tests/benchmarks/test_viewer_short.py runs it small and checks that it completes.

    python benchmarks/viewer.py [--size clinical|full|small] [--runs 5] [--json out.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
import numpy as np
from playwright.sync_api import Browser, Request, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.synth import write_synthetic_patients
from models.synth.geometry import Grid
from models.synth.params import sample_case
from models.synth.patient import write_case
from tests.service.api.conftest import zip_folders
from tests.serving import CHROMIUM, CHROMIUM_ARGS, embedded_serve

TARGET_MS = 1000.0
API_KEY = "benchmark-key-0123456789abcdefghij"
#: The issue's follow-up: 512×512 pixels, 150 slices (shape is slices, rows, columns). The
#: spacing keeps the "full" ORN follow-up's field of view (256 × 0.8 mm, 120 × 1 mm).
CLINICAL_SHAPE = (150, 512, 512)
CLINICAL_SPACING = (0.4, 0.4, 0.8)
SIZES = ("clinical", "full", "small")
JOB_TIMEOUT_S = 1800.0

# Run in every document before its own scripts. On a job page it stamps <html> with the time the
# first axial slice is on screen (the frame after its image has loaded), on any other page with
# the frame after DOMContentLoaded; both in ms since navigation start.
_STAMP_SCRIPT = """(() => {
  const stamp = (img) => requestAnimationFrame(() => {
    const root = document.documentElement;
    if (img) {
      root.dataset.benchWidth = String(img.naturalWidth);
      root.dataset.benchHeight = String(img.naturalHeight);
    }
    root.dataset.benchMs = performance.now().toFixed(1);
  });
  if (!location.pathname.startsWith('/ui/jobs/')) {
    document.addEventListener('DOMContentLoaded', () => stamp(null));
    return;
  }
  new MutationObserver((records, observer) => {
    const img = document.querySelector('#view-axial img.layer-image');
    if (!img || !img.dataset.loaded || !img.naturalWidth) return;
    observer.disconnect();
    stamp(img);
  }).observe(document, {subtree: true, childList: true, attributes: true, attributeFilter: ['data-loaded']});
})();"""


@dataclasses.dataclass
class Opening:
    """One page opened in a fresh context."""

    page_ms: float  # in the page: navigation start → stamped
    wall_ms: float  # around goto + wait, in this process
    width: int | None = None
    height: int | None = None
    view_request_ms: float | None = None  # GET .../view: request sent → first byte


def main() -> int:
    args = _arguments()
    scratch = args.keep or Path(tempfile.mkdtemp(prefix="rtinjury-viewer-"))
    try:
        started = time.perf_counter()
        patient = write_patient(scratch / "patient", args.size, args.seed)
        say(f"patient: ORN, follow-up {args.size}, written in {time.perf_counter() - started:.1f} s")
        with embedded_serve(scratch / "storage", scratch / "serve.log", API_KEY, ready_within_s=120) as url:
            job_id, job_s = run_job(url, patient)
            say(f"job {job_id} succeeded in {job_s:.1f} s")
            summary = measure(url, job_id, args.runs, args.chromium)
    finally:
        if args.keep is None:
            shutil.rmtree(scratch, ignore_errors=True)
    summary |= {"size": args.size, "job_seconds": round(job_s, 2)}
    print_summary(summary)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--size",
        choices=SIZES,
        default="clinical",
        help="follow-up grid: clinical 512×512×150 (default), or the synthetic full/small sizes",
    )
    parser.add_argument("--runs", type=int, default=5, help="openings of each page, each in a fresh context")
    parser.add_argument("--seed", type=int, default=9100)
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help="the system browser to drive")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", type=Path, default=None, help="keep patient, storage and log here")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


# --- the patient ---------------------------------------------------------------------------------


def write_patient(folder: Path, size: str, seed: int) -> Path:
    """One synthetic ORN patient; ``clinical`` renders its follow-up on a 512×512×150 grid."""
    if size != "clinical":
        return write_synthetic_patients(folder, task="orn", cases=1, seed=seed, size=size)[0]
    case = sample_case("orn", seed, 0, "full", 1)
    followup = case.followups[0]
    # The same field of view, centred where the "full" follow-up is, at clinical pixel counts:
    # the phantom is rendered on this grid, so the images are as sharp as the grid allows.
    nz, ny, nx = followup.grid.shape
    counts = [nx, ny, nz]
    centre = np.array(followup.grid.origin) + (np.array(counts) - 1) / 2 * np.array(followup.grid.spacing)
    grid = Grid.centred(centre, CLINICAL_SPACING, CLINICAL_SHAPE)
    case = dataclasses.replace(case, followups=(dataclasses.replace(followup, grid=grid),))
    case_dir = folder / "orn-000"
    case_dir.mkdir(parents=True)
    return write_case(case, case_dir)


# --- the server and the job ----------------------------------------------------------------------


def run_job(url: str, patient: Path) -> tuple[str, float]:
    """Upload the patient as a zip and wait for success; the job id and its seconds."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=300) as client:
        started = time.perf_counter()
        created = client.post(
            "/v1/jobs",
            files=[("files", ("patient.zip", zip_folders(patient), "application/zip"))],
            data={"task": "orn"},
        )
        if created.status_code != 202:
            raise SystemExit(f"the upload was refused: {created.status_code} {created.text}")
        job_id = str(created.json()["id"])
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["state"] == "failed":
                raise SystemExit(f"the job failed: {job['error']}")
            if job["state"] == "succeeded":
                return job_id, time.perf_counter() - started
            time.sleep(0.2)
    raise SystemExit(f"the job did not finish within {JOB_TIMEOUT_S:.0f} s")


# --- the measurement -----------------------------------------------------------------------------


def measure(url: str, job_id: str, runs: int, chromium: Path) -> dict[str, Any]:
    """Open the job page ``runs`` times (the first on a cold server), then the login page as many
    times; then ask the server for the view once more, warm, without a browser."""
    if not chromium.is_file():
        raise SystemExit(f"{chromium} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            state = log_in(browser, url)
            job_page = f"{url}/ui/jobs/{job_id}"
            openings = [open_page(browser, state, job_page) for _ in range(runs)]
            references = [open_page(browser, state, f"{url}/ui/login") for _ in range(runs)]
        finally:
            browser.close()
    view = _get_view(url, job_id)
    return summarise(openings, references, view)


def log_in(browser: Browser, url: str) -> dict[str, Any]:
    """Log in once through the form; the browser state (the session cookie) each context gets."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{url}/ui/login")
        page.fill("#api-key", API_KEY)
        page.click("#login-submit")
        page.wait_for_url(f"{url}/ui/jobs")
        state: dict[str, Any] = context.storage_state()  # type: ignore[assignment]
        return state
    finally:
        context.close()


def open_page(browser: Browser, state: dict[str, Any], url: str) -> Opening:
    """Open ``url`` in a fresh context (logged in, nothing cached) and wait for the stamp."""
    context = browser.new_context(storage_state=state)  # type: ignore[arg-type]
    try:
        context.add_init_script(_STAMP_SCRIPT)
        page = context.new_page()
        view_requests: list[Request] = []
        page.on("requestfinished", lambda r: view_requests.append(r) if r.url.endswith("/view") else None)
        started = time.perf_counter()
        page.goto(url, wait_until="commit")
        stamp = page.locator("html[data-bench-ms]")
        stamp.wait_for(state="attached", timeout=60_000)
        wall_ms = (time.perf_counter() - started) * 1000
        opening = Opening(float(stamp.get_attribute("data-bench-ms") or "nan"), wall_ms)
        if width := stamp.get_attribute("data-bench-width"):
            opening.width, opening.height = int(width), int(stamp.get_attribute("data-bench-height") or 0)
        if view_requests:
            timing = view_requests[0].timing
            opening.view_request_ms = timing["responseStart"] - timing["requestStart"]
        return opening
    finally:
        context.close()


def _get_view(url: str, job_id: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        started = time.perf_counter()
        answer = client.get(f"/v1/jobs/{job_id}/view")
        answer.raise_for_status()
        view: dict[str, Any] = answer.json()
        view["_warm_ms"] = (time.perf_counter() - started) * 1000
        return view


def summarise(openings: list[Opening], references: list[Opening], view: dict[str, Any]) -> dict[str, Any]:
    """The figures as one JSON-ready dictionary (what is printed and written with --json)."""
    page_ms = [o.page_ms for o in openings]
    reference_ms = [o.page_ms for o in references]
    warm = page_ms[1:]
    axial = view["planes"]["axial"]
    return {
        "grid": view["grid"]["size"],
        "axial_size": [axial["width"], axial["height"]],
        "first_slice_sizes": [[o.width, o.height] for o in openings],
        "job_page_ms": [round(v, 1) for v in page_ms],
        "job_page_wall_ms": [round(o.wall_ms, 1) for o in openings],
        "reference_ms": [round(v, 1) for v in reference_ms],
        "cold_ms": round(page_ms[0], 1),
        "warm_median_ms": round(statistics.median(warm), 1) if warm else None,
        "warm_max_ms": round(max(warm), 1) if warm else None,
        "median_ms": round(statistics.median(page_ms), 1),
        "max_ms": round(max(page_ms), 1),
        "reference_median_ms": round(statistics.median(reference_ms), 1),
        "ratio_median": round(statistics.median(page_ms) / statistics.median(reference_ms), 2),
        "server_view_cold_ms": _rounded(openings[0].view_request_ms),
        "server_view_warm_ms": _median([o.view_request_ms for o in openings[1:]]),
        "server_view_direct_warm_ms": round(view["_warm_ms"], 1),
        "target_ms": TARGET_MS,
        "passed": max(page_ms) <= TARGET_MS,
    }


def print_summary(summary: dict[str, Any]) -> None:
    runs = len(summary["job_page_ms"])
    say(
        f"\nfollow-up display grid {summary['grid']} (axial slice {summary['axial_size']}); "
        f"{runs} openings of each page"
    )
    say(f"{'page':<34}{'first':>9}{'median':>9}{'max':>9}  ms")
    rows = [
        ("job page, first axial slice shown", summary["job_page_ms"]),
        ("  the same, wall time (goto + wait)", summary["job_page_wall_ms"]),
        ("login page (reference)", summary["reference_ms"]),
    ]
    for label, values in rows:
        say(f"{label:<34}{values[0]:>9.1f}{statistics.median(values):>9.1f}{max(values):>9.1f}")
    say(
        f"cold server (first opening): {summary['cold_ms']:.1f} ms; "
        f"warm median {summary['warm_median_ms']} ms, max {summary['warm_max_ms']} ms"
    )
    say(f"ratio job page / login page (medians): {summary['ratio_median']:.2f}")
    say(
        f"server, GET /v1/jobs/{{id}}/view to first byte: cold {summary['server_view_cold_ms']} ms, "
        f"warm {summary['server_view_warm_ms']} ms (direct {summary['server_view_direct_warm_ms']} ms)"
    )
    sizes = {tuple(s) for s in summary["first_slice_sizes"]}
    say(f"first slice as decoded by the browser: {sorted(sizes)} (expected {summary['axial_size']})")
    verdict = "PASS" if summary["passed"] else "FAIL"
    say(
        f"target: first slice within {TARGET_MS:.0f} ms at every opening, cold included: {verdict} "
        f"(max {summary['max_ms']:.1f} ms)"
    )


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 1) if known else None


if __name__ == "__main__":
    sys.exit(main())
