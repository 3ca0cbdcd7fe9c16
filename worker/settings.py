"""Settings shared by the workers and everything that talks to them (prefix ``RTINJURY_``).

With no broker configured the service runs embedded: Celery's file-system transport under the
storage root and a SQLite result backend, so one machine needs neither Redis nor a GPU.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Typed settings; each field can be set as ``RTINJURY_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="RTINJURY_", extra="ignore")

    #: Job folders (inputs, intermediate files, outputs) live under ``<storage_root>/jobs``.
    storage_root: Path = Path("./rtinjury-data")
    #: A site's role rules (which series is the follow-up, the planning CT ...); packaged default.
    role_rules: Path | None = None
    #: Celery broker, e.g. ``redis://127.0.0.1:6379/0``; unset means embedded mode.
    broker_url: str | None = None
    #: Celery result backend; defaults to the broker (Redis) or a SQLite file (embedded).
    result_backend: str | None = None
    #: Network weights: a checkpoint file or an ONNX export folder; unset means the demo model.
    model: Path | None = None
    runtime: Literal["auto", "torch", "onnxruntime"] = "auto"
    #: "cpu" or "cuda" for the inference worker; None picks what the runtime finds.
    device: str | None = None
    #: Threads per inference process (None: the library default).
    threads: int | None = Field(default=None, ge=1, le=256)
    #: A local text-encoder folder; unset means the packaged MiniLM.
    text_encoder: str | None = None
    #: A stage that runs longer than this is stopped (soft limit) and the job fails cleanly.
    task_soft_time_limit_s: int = Field(default=1200, ge=10)
    #: Redis: a message a worker took but has not acknowledged (it acknowledges once the stage
    #: has run) is given to another worker after this long; None means the soft time limit plus
    #: ten minutes. That is how the stage of a worker killed mid-stage runs again, so it must stay
    #: longer than the slowest stage: a shorter one hands a stage that is still running to a
    #: second worker, and the stage runs twice. Lower it only where stages are known to be short.
    broker_visibility_timeout_s: int | None = Field(default=None, ge=1)

    #: Our AE title: the DICOM node's, and the calling AE title when results are sent to a PACS.
    node_ae_title: str = Field(default="RTINJURY", min_length=1, max_length=16)
    #: Attempts per destination when sending results (with exponential back-off between them).
    send_attempts: int = Field(default=3, ge=1, le=20)
    send_backoff_s: float = Field(default=2.0, ge=0)

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def jobs_root(self) -> Path:
        return self.storage_root / "jobs"

    @property
    def visibility_timeout_s(self) -> int:
        """The broker's visibility timeout (see ``broker_visibility_timeout_s``)."""
        if self.broker_visibility_timeout_s is not None:
            return self.broker_visibility_timeout_s
        return self.task_soft_time_limit_s + 600


@lru_cache
def get_worker_settings() -> WorkerSettings:
    """The process-wide settings, read once."""
    return WorkerSettings()
