"""Write the image's dependency layer requirements from pyproject.toml (stdlib only).

Usage: ``python requirements.py PYPROJECT --target cpu|cuda --out DIR``

Writes ``DIR/torch.txt`` (the pinned torch requirement alone, so the CPU image can take it from
the PyTorch CPU index) and ``DIR/requirements.txt`` (every other runtime dependency). For the
``cuda`` target, ``onnxruntime`` is replaced by ``onnxruntime-gpu`` with its ``cuda`` and
``cudnn`` extras (see ``ORT_GPU``). The Dockerfile installs these before copying the code, so a
code change does not reinstall the dependencies.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

#: The GPU build of ONNX Runtime for the cuda image. From 1.28 on, the PyPI wheels are built for
#: CUDA 13 with cuDNN 9 and their extras pull the CUDA 13 runtime wheels (nvidia-cuda-runtime,
#: nvidia-cudnn-cu13 ...), the same major versions as the default PyPI build of torch 2.13.0, so
#: one set of CUDA libraries serves both. 1.27 used differently named CUDA 13 wheels; 1.26 and
#: older are CUDA 12 builds.
ORT_GPU = "onnxruntime-gpu[cuda,cudnn]>=1.28,<2"

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def distribution_name(requirement: str) -> str:
    """The normalised distribution name of a PEP 508 requirement string."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def split_requirements(pyproject: Path, target: str) -> tuple[list[str], list[str]]:
    """(torch requirements, other requirements) of the project for the given image target."""
    with pyproject.open("rb") as handle:
        dependencies: list[str] = tomllib.load(handle)["project"]["dependencies"]
    torch: list[str] = []
    others: list[str] = []
    for requirement in dependencies:
        name = distribution_name(requirement)
        if name == "torch":
            torch.append(requirement)
        elif name == "onnxruntime" and target == "cuda":
            others.append(ORT_GPU)
        else:
            others.append(requirement)
    if len(torch) != 1:
        raise ValueError(f"{pyproject}: expected exactly one torch requirement, found {len(torch)}")
    return torch, others


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--target", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        torch, others = split_requirements(args.pyproject, args.target)
    except (OSError, KeyError, ValueError, tomllib.TOMLDecodeError) as error:
        sys.stderr.write(f"requirements: {error}\n")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "torch.txt").write_text("\n".join(torch) + "\n", encoding="utf-8")
    (args.out / "requirements.txt").write_text("\n".join(others) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
