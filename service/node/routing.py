"""Routing rules of the DICOM node, as data: which follow-up runs, how, and where results go.

The packaged ``routes.yaml`` runs every follow-up with its own task and sends results nowhere
(they stay on the API); a site points ``RTINJURY_NODE_ROUTES`` at its own file.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from worker.errors import InputError
from worker.jobs.spec import ClinicalFields, Destination, DestinationTLS, JobOptions, JobSpec, Task
from worker.stages.assemble.case import Case
from worker.stages.prompts import DEFAULT_TAU


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DestinationConfig(_Strict):
    ae_title: str = Field(min_length=1, max_length=16)
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    tls: DestinationTLS | None = None


class RouteMatch(_Strict):
    """Conditions on a follow-up; every one given must hold."""

    task: list[Task] | None = None
    modality: list[str] | None = None
    sequence: list[str] | None = None
    description: list[str] | None = None
    calling_ae: list[str] | None = None

    @model_validator(mode="after")
    def _patterns_compile(self) -> RouteMatch:
        for pattern in [*(self.description or []), *(self.calling_ae or [])]:
            try:
                re.compile(pattern)
            except re.error as error:
                raise ValueError(f"{pattern!r} is not a regular expression ({error})") from None
        return self

    def holds(self, case: Case, calling_aes: Sequence[str]) -> bool:
        series = case.followup
        return (
            _any_of(self.task, case.task)
            and _any_of(self.modality, series.text("Modality"))
            and _any_of(self.sequence, case.followup_kind)
            and _searched(self.description, [series.text("SeriesDescription")])
            and _searched(self.calling_ae, list(calling_aes), anchored=True)
        )


class Route(_Strict):
    name: str
    match: RouteMatch = Field(default_factory=lambda: RouteMatch())
    run: bool = True
    task: Task | None = None
    clinical_text: str | None = Field(default=None, max_length=1000)
    clinical: ClinicalFields = Field(default_factory=lambda: ClinicalFields())
    tau: float = Field(default=DEFAULT_TAU, gt=0, lt=1)
    options: JobOptions = Field(default_factory=lambda: JobOptions())
    destinations: list[str] = Field(default_factory=list)


class RoutingRules(_Strict):
    version: int = 1
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict)
    routes: list[Route] = Field(default_factory=list)

    @model_validator(mode="after")
    def _destinations_exist(self) -> RoutingRules:
        for route in self.routes:
            unknown = sorted(set(route.destinations) - set(self.destinations))
            if unknown:
                raise ValueError(f"route {route.name!r} names unknown destination(s): {', '.join(unknown)}")
        return self

    def route_for(self, case: Case, calling_aes: Sequence[str]) -> Route | None:
        """The first route whose conditions hold, if it runs the follow-up; else None."""
        route = next((r for r in self.routes if r.match.holds(case, calling_aes)), None)
        return route if route is not None and route.run else None

    def spec_for(self, route: Route, case: Case) -> JobSpec:
        """The job a route makes of one follow-up."""
        return JobSpec(
            task=route.task or case.task,  # type: ignore[arg-type]
            clinical_text=route.clinical_text,
            clinical=route.clinical,
            tau=route.tau,
            options=route.options,
            followup_series_uid=case.followup.uid,
            destinations=[
                Destination(name=name, **self.destinations[name].model_dump()) for name in route.destinations
            ],
        )


def load_routes(path: Path | None = None) -> RoutingRules:
    """The rules in ``path`` (the packaged defaults when None).

    Raises
    ------
    worker.errors.InputError
        The file cannot be read or does not hold valid rules (which entry, and why).
    """
    try:
        if path is None:
            text = resources.files("service.node").joinpath("routes.yaml").read_text(encoding="utf-8")
        else:
            text = Path(path).read_text(encoding="utf-8")
        document: Any = yaml.safe_load(text)
        return RoutingRules.model_validate(document or {})
    except (OSError, yaml.YAMLError) as error:
        raise InputError(
            f"routing rules {path or 'routes.yaml'}: cannot be read ({type(error).__name__})"
        ) from None
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise InputError(f"routing rules {path or 'routes.yaml'}: {problems}") from None


def _any_of(allowed: Sequence[str] | None, value: str) -> bool:
    return allowed is None or value.upper() in {a.upper() for a in allowed}


def _searched(patterns: Sequence[str] | None, texts: list[str], *, anchored: bool = False) -> bool:
    if patterns is None:
        return True
    match = re.fullmatch if anchored else re.search
    return any(match(pattern, text) for pattern in patterns for text in texts)
