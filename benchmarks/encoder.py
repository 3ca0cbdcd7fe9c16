"""Benchmark: the image encoder and the prompt decoder, ours against upstream's formulation.

One run measures, on the same random weights and input:

- encoder, ours (windowed blocks over the 512 real tokens plus one padding key, exact);
- encoder, the padded reference (upstream's formulation: each windowed block attends over the
  zero-padded 14³ window of 2,744 tokens), and the ratio between the two;
- encoder in ONNX Runtime against PyTorch eager;
- prompt encoder + mask decoder on a given embedding with 4 clicks, a box and a text token
  (interactive refinement), PyTorch and ONNX Runtime;
- resident memory before and at the peak of each (each measurement runs in its own process,
  so peaks don't mix; sampled every 2 ms), and the largest difference between outputs.

    python benchmarks/encoder.py [--config sam-med3d] [--threads 2] [--rounds 3] [--device cpu|cuda]

The targets (issue 4): ours ≥ 15× faster than the reference; decoder ≤ 100 ms on 2 CPU threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.build import build_model
from models.config import ModelConfig, get_config
from models.export_onnx import export_onnx
from models.modeling.network import Sam3D
from models.modeling.prompt_encoder import prompt_points
from models.runtime import OnnxBackend, TorchBackend
from tests.models.modeling.reference_encoder import randomise_, reference_encoder

MEASURES = ("ours", "reference", "onnx", "decoder-torch", "decoder-onnx")


def _model(config: str) -> Sam3D:
    torch.manual_seed(0)
    model = build_model(config).eval()
    randomise_(model, seed=0)
    return model


def _inputs(cfg: ModelConfig) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    size, low = cfg.img_size, cfg.low_res_size
    clicks = (
        torch.tensor(rng.uniform(20, 100, (1, 4, 3)), dtype=torch.float32),
        torch.tensor([[1, 1, 0, 0]]),
    )
    box = torch.tensor([[[30.0, 35.0, 40.0], [90.0, 95.0, 99.0]]])
    coords, labels = prompt_points(clicks, box if cfg.box_prompt else None)
    assert coords is not None and labels is not None
    inputs = {
        "volume": rng.standard_normal((1, 1, size, size, size)).astype(np.float32),
        "coords": coords.numpy().astype(np.float32),
        "labels": labels.numpy().astype(np.int64),
        "mask": rng.standard_normal((1, 1, low, low, low)).astype(np.float32),
    }
    if cfg.text_dim:
        inputs["text"] = rng.standard_normal((1, cfg.text_dim)).astype(np.float32)
    return inputs


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakRss:
    """Samples the process's resident memory every 2 ms while the measured calls run."""

    def __init__(self) -> None:
        self.baseline = _rss_mib()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_mib())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mib())


def _timed(fn: Callable[[], np.ndarray], rounds: int) -> tuple[list[float], np.ndarray, PeakRss]:
    with PeakRss() as memory:
        out = fn()  # warm-up (allocator, ORT graph optimisation, CUDA context)
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            out = fn()
            times.append(time.perf_counter() - start)
    return times, out, memory


def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs in a child process: one measurement, its output saved for the parity comparison."""
    torch.set_num_threads(args.threads)
    inputs = _inputs(get_config(args.config))
    device = torch.device(args.device)
    providers = ["CPUExecutionProvider"]
    if args.device == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    # ONNX Runtime measurements hold no PyTorch model, so the memory they report is their own.
    model = _model(args.config).to(device) if kind in ("ours", "reference", "decoder-torch") else None
    rounds = args.rounds
    fn: Callable[[], np.ndarray]
    if kind in ("ours", "reference"):
        assert model is not None
        encoder, volume = model.image_encoder, torch.from_numpy(inputs["volume"]).to(device)
        if kind == "ours":
            fn = lambda: _sync(encoder(volume), device)  # noqa: E731
        else:
            rounds = max(1, args.reference_rounds)
            fn = lambda: _sync(reference_encoder(encoder, volume), device)  # noqa: E731
    elif kind == "onnx":
        onnx = OnnxBackend(Path(args.onnx_dir), providers=providers, threads=args.threads)
        fn = lambda: onnx.embed(inputs["volume"])  # noqa: E731
    else:
        embedding = np.load(Path(args.work) / "ours.npy")
        backend: TorchBackend | OnnxBackend = (
            TorchBackend(model, device=args.device, threads=args.threads)
            if model is not None
            else OnnxBackend(Path(args.onnx_dir), providers=providers, threads=args.threads)
        )
        fn = lambda: backend.decode(  # noqa: E731
            embedding, inputs["coords"], inputs["labels"], inputs["mask"], inputs.get("text")
        )[0]
        rounds = args.rounds * 10
    with torch.inference_mode():
        times, out, memory = _timed(fn, rounds)
    np.save(Path(args.work) / f"{kind}.npy", np.asarray(out))
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    return {
        "kind": kind,
        "median_s": statistics.median(times),
        "min_s": min(times),
        "rounds": len(times),
        "rss_before_mib": memory.baseline,
        "peak_rss_mib": memory.peak,
        "peak_cuda_mib": peak_gpu,
    }


def _sync(out: torch.Tensor, device: torch.device) -> np.ndarray:
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out.detach().float().cpu().numpy()


def _child(kind: str, args: argparse.Namespace, work: Path, onnx_dir: Path) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--measure", kind, "--config", args.config,
        "--threads", str(args.threads), "--rounds", str(args.rounds),
        "--reference-rounds", str(args.reference_rounds), "--device", args.device,
        "--work", str(work), "--onnx-dir", str(onnx_dir),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"measurement {kind} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _diff(work: Path, a: str, b: str) -> float:
    return float(np.abs(np.load(work / f"{a}.npy") - np.load(work / f"{b}.npy")).max())


def _export(args: argparse.Namespace, onnx_dir: Path) -> float:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    export_onnx(_model(args.config), onnx_dir, check=False)
    return time.perf_counter() - start


def _line(label: str, r: dict[str, Any]) -> str:
    gpu = f", peak CUDA {r['peak_cuda_mib']:.0f} MiB" if r.get("peak_cuda_mib") is not None else ""
    return (
        f"  {label:<40} median {r['median_s'] * 1000:9.1f} ms "
        f"(min {r['min_s'] * 1000:.1f}, n={r['rounds']}), "
        f"RSS {r['rss_before_mib']:.0f} -> peak {r['peak_rss_mib']:.0f} MiB{gpu}"
    )


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="rtinjury-bench-") as tmp:
        work, onnx_dir = Path(tmp), Path(tmp) / "onnx"
        export_s = _export(args, onnx_dir)
        wanted = [m for m in MEASURES if not (args.skip_reference and m == "reference")]
        results = {kind: _child(kind, args, work, onnx_dir) for kind in wanted}
        out = sys.stdout
        out.write(
            f"encoder benchmark: config {args.config}, device {args.device}, {args.threads} threads, "
            f"torch {torch.__version__}, ONNX export {export_s:.1f} s\n"
        )
        out.write(_line("encoder, ours (torch)", results["ours"]) + "\n")
        if "reference" in results:
            out.write(_line("encoder, padded reference (torch)", results["reference"]) + "\n")
        out.write(_line("encoder, ours (ONNX Runtime)", results["onnx"]) + "\n")
        out.write(_line("decoder, 4 clicks + box (torch)", results["decoder-torch"]) + "\n")
        out.write(_line("decoder, 4 clicks + box (ONNX Runtime)", results["decoder-onnx"]) + "\n")
        ours = results["ours"]["median_s"]
        if "reference" in results:
            out.write(
                f"  ratio reference / ours: {results['reference']['median_s'] / ours:.1f}x (target >= 15x); "
                f"max |ours - reference| {_diff(work, 'ours', 'reference'):.2e}\n"
            )
        out.write(
            f"  ratio torch / ONNX Runtime (encoder): {ours / results['onnx']['median_s']:.2f}x; "
            f"max |diff| {_diff(work, 'ours', 'onnx'):.2e}\n"
            f"  ratio torch / ONNX Runtime (decoder): "
            f"{results['decoder-torch']['median_s'] / results['decoder-onnx']['median_s']:.2f}x; "
            f"max |diff| {_diff(work, 'decoder-torch', 'decoder-onnx'):.2e}; "
            f"decoder target <= 100 ms on 2 CPU threads\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sam-med3d")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reference-rounds", type=int, default=2, help="the reference is slow")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--measure", choices=MEASURES, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--onnx-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.stdout.write(json.dumps(measure(args.measure, args)) + "\n")
    else:
        run(args)


if __name__ == "__main__":
    main()
