"""Role rules as data: the site-editable YAML that says which series plays which role."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.errors import InputError
from worker.stages.assemble.index import Series

DEFAULT_RULES = Path(__file__).with_name("roles.yaml")
Task = Literal["orn", "ce", "crn"]
SequenceKind = Literal["ct", "t1c", "flair", "t2"]


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _compile(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from exc
    return patterns


class ExcludeRule(_Rule):
    image_type: list[str] = Field(default_factory=list)
    description: list[str] = Field(default_factory=list)

    _check = field_validator("description")(_compile)


class PlanningRule(_Rule):
    modality: list[str] = ["CT"]
    prefer_description: list[str] = Field(default_factory=list)

    _check = field_validator("prefer_description")(_compile)


class SequenceRule(_Rule):
    kind: SequenceKind
    task: Task
    modality: str
    description: list[str] = Field(default_factory=list)
    contrast_agent: bool | None = None

    _check = field_validator("description")(_compile)

    def matches(self, series: Series) -> bool:
        """Whether ``series`` is of this rule's kind."""
        if series.text("Modality").upper() != self.modality.upper():
            return False
        texts = " | ".join(series.text(k) for k in ("SeriesDescription", "ProtocolName", "SequenceName"))
        if self.description and not any(re.search(p, texts) for p in self.description):
            return False
        has_agent = bool(series.text("ContrastBolusAgent").strip())
        return self.contrast_agent is None or self.contrast_agent == has_agent


class FollowupRule(_Rule):
    modality: list[str] = ["CT", "MR"]
    min_frames: int = 5
    not_before_planning: bool = True
    sequences: list[SequenceRule]


class RoleRules(_Rule):
    """The whole rules file."""

    version: Literal[1] = 1
    exclude: ExcludeRule = ExcludeRule()
    planning_ct: PlanningRule = PlanningRule()
    followup: FollowupRule

    def is_excluded(self, series: Series) -> bool:
        """Localizers, scouts and other image series that never play a role."""
        image_type = series.text("ImageType").upper().split("\\")
        if any(t.upper() in image_type for t in self.exclude.image_type):
            return True
        description = series.text("SeriesDescription")
        return any(re.search(p, description) for p in self.exclude.description)

    def sequence_of(self, series: Series) -> SequenceRule | None:
        """The first sequence rule that matches ``series``."""
        return next((r for r in self.followup.sequences if r.matches(series)), None)

    def planning_preference(self, series: Series) -> bool:
        description = series.text("SeriesDescription")
        return any(re.search(p, description) for p in self.planning_ct.prefer_description)


def load_rules(path: Path | None = None) -> RoleRules:
    """Read and validate a rules file (the packaged default when ``path`` is None).

    Raises
    ------
    worker.errors.InputError
        The file is missing, not YAML, or does not follow the schema.
    """
    return _load(str(path or DEFAULT_RULES))


@lru_cache(maxsize=8)
def _load(path: str) -> RoleRules:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        return RoleRules.model_validate(data)
    except OSError as exc:
        raise InputError(f"role rules {path}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"role rules {path}: not valid YAML ({exc})") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"role rules {path}: {where}: {first['msg']}") from exc
