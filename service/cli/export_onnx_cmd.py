"""``rtinjury export-onnx``: the network as two ONNX graphs (encoder; prompts + decoder)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.output import emit_json, say


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "export-onnx",
        help="export a checkpoint as ONNX graphs (image encoder; prompt encoder + mask decoder)",
        description=(
            "Writes encoder.onnx, decoder.onnx and manifest.json into OUT. The decoder graph takes "
            "a dynamic number of clicks, so interactive refinement re-runs only it. Both graphs are "
            "checked in ONNX Runtime against PyTorch (max |difference| <= 1e-3) unless --no-check."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="our checkpoint or an upstream SAM-Med3D file")
    source.add_argument(
        "--random-weights",
        metavar="CONFIG",
        help="export a randomly initialised network of this configuration (for trials and benchmarks)",
    )
    parser.add_argument(
        "--config",
        default=None,
        help="configuration for an upstream file, which carries none (default sam-med3d)",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the graphs into")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow a checkpoint that holds arbitrary pickled objects (only for files you trust)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from models.build import build_model
    from models.checkpoint import load_checkpoint
    from models.config import get_config
    from models.export_onnx import export_onnx

    weights_sha256: str | None = None
    if args.checkpoint is not None:
        config = get_config(args.config) if args.config else None
        loaded = load_checkpoint(args.checkpoint, config=config, trust_pickle=args.trust_checkpoint)
        model, weights_sha256 = loaded.model, loaded.weights_sha256
        notes = [f"freshly initialised (not in the file): {k}" for k in loaded.initialised_keys]
    else:
        model = build_model(get_config(args.random_weights))
        notes = ["random weights: for trials and benchmarks only, not for patients"]
    result = export_onnx(
        model, args.out, opset=args.opset, check=not args.no_check, weights_sha256=weights_sha256
    )
    document = {
        "config": model.config.name,
        "encoder": str(result.encoder_path),
        "decoder": str(result.decoder_path),
        "manifest": str(result.manifest_path),
        "encoder_max_abs_diff": result.encoder_max_abs_diff,
        "decoder_max_abs_diff": result.decoder_max_abs_diff,
        "weights_sha256": weights_sha256,
        "notes": notes,
    }
    if args.json:
        emit_json(document)
        return 0
    say(f"exported {model.config.name} to {args.out}")
    say(f"  encoder  {result.encoder_path.name}  ({_size(result.encoder_path)})")
    say(f"  decoder  {result.decoder_path.name}  ({_size(result.decoder_path)})")
    if result.encoder_max_abs_diff is not None and result.decoder_max_abs_diff is not None:
        say(
            f"  ONNX Runtime vs PyTorch: encoder max |diff| {result.encoder_max_abs_diff:.1e}, "
            f"decoder {result.decoder_max_abs_diff:.1e}"
        )
    for note in notes[:3]:
        say(f"  note: {note}")
    if len(notes) > 3:
        say(f"  note: and {len(notes) - 3} more freshly initialised keys")
    return 0


def _size(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"
