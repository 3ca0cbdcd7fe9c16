"""Settings of the API process (environment variables with the ``RTINJURY_`` prefix)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Typed settings; each field can be set as ``RTINJURY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RTINJURY_", extra="ignore")

    storage_root: Path = Path("./rtinjury-data")
    role_rules: Path | None = None


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
