"""Public request and response schemas of the REST API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class HealthPublic(BaseModel):
    """Liveness answer."""

    status: Literal["ok"]
    version: str
