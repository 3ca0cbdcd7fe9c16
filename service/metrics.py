"""Prometheus metrics of one app: HTTP requests, stage durations, jobs by state, the DICOM node.

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
from sqlalchemy.orm import Session

from service.db import Database, JobRecord, NodeAssociation, NodeInstance, NodeStudy
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


class NodeCollector(Collector):
    """The DICOM node's figures, from its tables at scrape time (the node is another process):
    instances by state and bytes stored, associations by outcome, studies by state, and
    deliveries of results by outcome."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def describe(self) -> Iterable[Metric]:
        return list(self._families().values())

    def collect(self) -> Iterable[Metric]:
        families = self._families()
        try:
            with self.database.session() as session:
                self._fill(session, families)
        except Exception as error:
            log.warning("node metrics not collected: %s", type(error).__name__)
            return []
        return list(families.values())

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        return {
            "instances": GaugeMetricFamily(
                "rtinjury_node_instances", "Instances the node stored, by state.", labels=["state"]
            ),
            "bytes": GaugeMetricFamily(
                "rtinjury_node_stored_bytes", "Bytes of the instances the node stored."
            ),
            "associations": GaugeMetricFamily(
                "rtinjury_node_associations", "Associations peers opened, by outcome.", labels=["outcome"]
            ),
            "studies": GaugeMetricFamily(
                "rtinjury_node_studies", "Patients' studies by state.", labels=["state"]
            ),
            "deliveries": GaugeMetricFamily(
                "rtinjury_deliveries", "Sends of results to DICOM destinations, by outcome.", labels=["state"]
            ),
        }

    @staticmethod
    def _fill(session: Session, families: dict[str, GaugeMetricFamily]) -> None:
        for state, count in session.execute(
            select(NodeInstance.state, func.count()).group_by(NodeInstance.state)
        ):
            families["instances"].add_metric([state], count)
        families["bytes"].add_metric(
            [], session.scalar(select(func.coalesce(func.sum(NodeInstance.size), 0))) or 0
        )
        outcomes = select(NodeAssociation.outcome, func.count()).group_by(NodeAssociation.outcome)
        for outcome, count in session.execute(outcomes):
            families["associations"].add_metric([outcome], count)
        for state, count in session.execute(select(NodeStudy.state, func.count()).group_by(NodeStudy.state)):
            families["studies"].add_metric([state], count)
        deliveries: dict[str, int] = {}
        for status in session.scalars(select(JobRecord.status).where(JobRecord.source == "node")):
            for delivery in status.get("deliveries", []):
                deliveries[delivery["state"]] = deliveries.get(delivery["state"], 0) + 1
        for state, count in sorted(deliveries.items()):
            families["deliveries"].add_metric([state], count)


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
        self.registry.register(NodeCollector(database))

    def count_request(self, method: str, route: str, status: int) -> None:
        self.requests.labels(method, route, str(status)).inc()

    def observe_stages(self, timings_s: Mapping[str, float]) -> None:
        for stage, seconds in timings_s.items():
            self.stage_duration.labels(stage).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
