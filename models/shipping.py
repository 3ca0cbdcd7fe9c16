"""Turn a trained checkpoint into the shipped demo model: float16 checkpoint + ONNX export.

Weights are rounded to float16 once, so the float16 checkpoint and the ONNX graphs (float16
storage behind Casts) hold exactly the same network, at half the size each — the two together
stay under the repository's 20 MB budget for a ~5 M parameter network. What gets evaluated and
described in the model card is this rounded network, not the float32 one it came from.

Run: ``python -m models.shipping RUN/model.pt`` (writes into ``models/weights/``).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from models.checkpoint import load_checkpoint, round_to_half, save_checkpoint
from models.export_onnx import OnnxExport, export_onnx
from models.loading import DEMO_CHECKPOINT, DEMO_ONNX_DIR


@dataclass(frozen=True)
class ShippedModel:
    checkpoint: Path
    weights_sha256: str
    onnx: OnnxExport
    megabytes: float


def ship_model(
    trained: Path, checkpoint: Path = DEMO_CHECKPOINT, onnx_dir: Path = DEMO_ONNX_DIR
) -> ShippedModel:
    """Write the float16 checkpoint and its half-weight ONNX export (parity-checked)."""
    loaded = load_checkpoint(trained)
    model = round_to_half(loaded.model)
    metadata = {
        **loaded.metadata,
        "trained_weights_sha256": loaded.weights_sha256,
        "stored_weights": "float16",
    }
    sha = save_checkpoint(model, checkpoint, metadata, half=True)
    export = export_onnx(model, onnx_dir, half_weights=True, weights_sha256=sha)
    files = [checkpoint, export.encoder_path, export.decoder_path, export.manifest_path]
    return ShippedModel(checkpoint, sha, export, sum(f.stat().st_size for f in files) / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trained", type=Path, help="checkpoint written by rtinjury train")
    args = parser.parse_args()
    shipped = ship_model(args.trained)
    onnx = shipped.onnx
    sys.stdout.write(
        f"{shipped.checkpoint} sha256 {shipped.weights_sha256}\n"
        f"ONNX max |diff| encoder {onnx.encoder_max_abs_diff:.1e}, decoder {onnx.decoder_max_abs_diff:.1e}\n"
        f"{shipped.megabytes:.1f} MB in all\n"
    )


if __name__ == "__main__":
    main()
