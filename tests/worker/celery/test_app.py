"""The Celery configuration the settings make: how soon Redis hands out an unacknowledged stage."""

from __future__ import annotations

from pathlib import Path

from worker.celery.app import CeleryConfig
from worker.settings import WorkerSettings

REDIS = "redis://127.0.0.1:6379/0"


def test_the_visibility_timeout_outlasts_the_slowest_stage_by_default(tmp_path: Path) -> None:
    settings = WorkerSettings(storage_root=tmp_path, broker_url=REDIS, task_soft_time_limit_s=1200)
    options = CeleryConfig(settings).broker_transport_options
    assert options["visibility_timeout"] == 1800 > settings.task_soft_time_limit_s + 60  # the hard limit
    # Unacknowledged messages are looked for every 100 s (kombu's own pace), one query each.
    assert (options["unacked_restore_interval"], options["unacked_restore_throttle"]) == (100, 1)


def test_a_short_visibility_timeout_is_looked_after_as_often(tmp_path: Path) -> None:
    settings = WorkerSettings(storage_root=tmp_path, broker_url=REDIS, broker_visibility_timeout_s=20)
    options = CeleryConfig(settings).broker_transport_options
    assert options["visibility_timeout"] == 20
    assert options["unacked_restore_interval"] == 5


def test_the_embedded_queue_has_no_visibility_timeout(tmp_path: Path) -> None:
    options = CeleryConfig(WorkerSettings(storage_root=tmp_path)).broker_transport_options
    assert "visibility_timeout" not in options
    assert options["data_folder_in"].startswith(str(tmp_path.resolve()))
