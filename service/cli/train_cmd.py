"""``rtinjury train``: DICOM case folders → cached training cases → a trained checkpoint."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, progress_line, say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train or fine-tune the network on annotated DICOM cases",
        description=(
            "Every follow-up in DATA with a SEG or RTSTRUCT drawn on it becomes a training case, "
            "prepared by the service's own stages (assemble, read, register, dose, high-dose region) "
            "and cached as 1 mm arrays. Cases are split by patient within each task (about 4:1). "
            "OUT receives model.pt (self-describing checkpoint), last.pt, train-state.pt (for "
            "--resume) and log.jsonl."
        ),
    )
    parser.add_argument(
        "--data", type=Path, required=True, help="folder of patient folders (e.g. rtinjury synth output)"
    )
    parser.add_argument("--out", type=Path, required=True, help="run folder for checkpoints and the log")
    parser.add_argument("--config", default="small-64", help="network configuration (default small-64)")
    parser.add_argument(
        "--variant",
        default="base-t-b-c-l",
        help="ablation variant: base, base-t, base-t-b, base-t-b-c, base-t-b-c-l (full model, default)",
    )
    parser.add_argument(
        "--arch",
        default="sam",
        help="sam (default) or a MONAI baseline: vnet, segresnet, dynunet, unetr, swinunetr",
    )
    parser.add_argument("--baseline-width", default="paper", help="baselines: paper (default) or tiny")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--samples-per-epoch", type=int, default=None, help="crops per epoch (default: one per case)"
    )
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, default=None, help="training cache folder (default OUT/../cache)"
    )
    parser.add_argument("--workers", type=int, default=1, help="processes preparing cases for the cache")
    parser.add_argument(
        "--weights", type=Path, default=None, help="pretrained checkpoint (image encoder frozen)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in OUT from its last epoch")
    parser.add_argument("--text-encoder", default=None, help="local text model folder (default MiniLM)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    def tell(text: str) -> None:
        progress_line(text, machine=args.json)

    from tqdm import tqdm

    from models.text.registry import open_text_encoder
    from models.training.trainer import TrainSettings, train
    from service import __version__
    from worker.training.cases import build_cache
    from worker.training.data import training_data

    cache_dir = args.cache or args.out.parent / "cache"
    tell(f"preparing training cases from {args.data} (cache {cache_dir})")
    report = build_cache(args.data, cache_dir, workers=args.workers)
    for name, reason in sorted(report.failures.items()):
        tell(f"  skipped {name}: {reason}")
    tell(f"  {len(report.cases)} case(s), {report.reused} reused from the cache")
    encoder = open_text_encoder(args.text_encoder, cache_dir=cache_dir / "text")
    data = training_data(cache_dir, encoder, split_seed=args.seed)
    settings = TrainSettings(
        config=args.config,
        variant=args.variant,
        arch=args.arch,
        baseline_width=args.baseline_width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        samples_per_epoch=args.samples_per_epoch,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        augmentation=None if args.no_augment else TrainSettings().augmentation,
    )
    what = settings.variant if settings.arch == "sam" else settings.arch
    tell(
        f"training {what} ({settings.config}) on {len(data.train)} case(s), "
        f"validating on {len(data.validation)}"
    )
    bar = tqdm(total=None, unit="step", disable=args.json, dynamic_ncols=True)

    def progress(epoch: int, step: int, loss: float) -> None:
        bar.set_description(f"epoch {epoch + 1}/{settings.epochs}")
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update(1)

    try:
        result = train(
            data,
            settings,
            args.out,
            pretrained=args.weights,
            resume=args.resume,
            code_version=_code_version(__version__),
            progress=progress,
        )
    finally:
        bar.close()
    document = {
        "checkpoint": str(result.checkpoint),
        "weights_sha256": result.weights_sha256,
        "epochs_run": result.epochs_run,
        "final_loss": result.history[-1]["loss"] if result.history else None,
        "validation": result.validation,
        "train_cases": len(data.train),
        "validation_cases": len(data.validation),
        "data_hash": data.data_hash,
    }
    if args.json:
        emit_json(document)
        return 0
    say(f"wrote {result.checkpoint} after {result.epochs_run} epoch(s)")
    if result.validation:
        say("  validation " + ", ".join(f"{k} {v:.3f}" for k, v in result.validation.items()))
    return 0


def _code_version(package_version: str) -> str:
    """The package version, plus the git commit when run from a checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return package_version
    return f"{package_version}+g{commit}" if commit else package_version
