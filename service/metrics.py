"""Prometheus metrics of one app: HTTP requests, stage durations, and jobs by state.

Each app has its own ``CollectorRegistry`` (several apps in one test process must not share
series). Jobs by state are counted from the database at scrape time, so every API process
reports the same numbers; the other two are per process, as Prometheus expects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from service.db import Database, JobRecord
from worker.jobs.status import JobState

log = logging.getLogger(__name__)

#: Stage durations range from under a second (assemble) to minutes (register, infer on CPU).
STAGE_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0)
_JOBS_METRIC = "rtinjury_jobs"
_JOBS_HELP = "Jobs (not deleted) by state, from the job database at scrape time."


class JobsByStateCollector(Collector):
    def __init__(self, database: Database) -> None:
        self.database = database

    def describe(self) -> Iterable[Metric]:
        # Declared without touching the database (registration happens when the app is built).
        return [GaugeMetricFamily(_JOBS_METRIC, _JOBS_HELP, labels=["state"])]

    def collect(self) -> Iterable[Metric]:
        gauge = GaugeMetricFamily(_JOBS_METRIC, _JOBS_HELP, labels=["state"])
        try:
            counts = self._counts()
        except Exception as error:
            # A scrape must still answer (request counts, durations) when the database does not.
            log.warning("jobs by state not collected: %s", type(error).__name__)
            return []
        for state in JobState:
            gauge.add_metric([state.value], counts.get(state.value, 0))
        return [gauge]

    def _counts(self) -> dict[str, int]:
        query = (
            select(JobRecord.state, func.count())
            .where(JobRecord.deleted.is_(False))
            .group_by(JobRecord.state)
        )
        with self.database.session() as session:
            return {state: int(count) for state, count in session.execute(query).all()}


class ServiceMetrics:
    """The registry of one app and the instruments the routes and middleware use."""

    def __init__(self, database: Database) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "rtinjury_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.stage_duration = Histogram(
            "rtinjury_stage_duration_seconds",
            "Duration of finished pipeline stages.",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(JobsByStateCollector(database))

    def count_request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    def observe_stages(self, timings_s: Mapping[str, float]) -> None:
        for stage, seconds in timings_s.items():
            self.stage_duration.labels(stage).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
