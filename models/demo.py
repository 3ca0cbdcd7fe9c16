"""Where the shipped demo network lives inside the package (light: no torch import)."""

from __future__ import annotations

from pathlib import Path

#: The shipped demo network (trained on synthetic patients; see its model card).
DEMO_DIR = Path(__file__).resolve().parent / "weights"
DEMO_CHECKPOINT = DEMO_DIR / "demo-small-64.pt"
DEMO_ONNX_DIR = DEMO_DIR / "demo-small-64-onnx"
