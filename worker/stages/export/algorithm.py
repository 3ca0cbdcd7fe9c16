"""Who made a result: the identification every output carries (SEG, RTSTRUCT, SR, report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

MANUFACTURER = "rtinjury"
MODEL_NAME = "rtinjury RT injury segmentation"
#: Said in every series description and report: a person must review before clinical use.
UNREVIEWED = "AI-generated, not reviewed"


def software_version() -> str:
    try:
        return version("rtinjury")
    except PackageNotFoundError:  # a source tree that is not installed
        return "0.0.0"


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm and the exact weights that produced a result."""

    model_id: str
    weights_sha256: str
    name: str = "rtinjury"
    version: str = field(default_factory=software_version)

    @property
    def short_hash(self) -> str:
        return self.weights_sha256[:12]
