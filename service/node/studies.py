"""When a patient's study is complete, and what jobs it makes.

DIMSE cannot say that a study is complete. Like Orthanc's stable age and the MONAI Informatics
Gateway's timeout, a patient's study counts as complete once no association has delivered new
instances for a quiet period (counted from released associations only: an aborted one's
instances were set aside) and no association of the patient is still open. The watcher then
assembles every accepted instance of the patient and makes one job per routed follow-up.

Jobs are idempotent: a job's key hashes the patient, the follow-up series and the SOP instances
of the case (follow-up, planning CT, RTDOSE, RTPLAN, RTSTRUCT, REG). A study sent twice (stored
once) gives the same key and runs once; a late RTDOSE changes the input set, so the follow-up
runs again with it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.errors import ServiceProblem
from service.config import Settings
from service.db import Database, JobRecord, NodeInstance, NodeStudy
from service.db.models import utc_now
from service.jobs import JobQueue, admit_job
from service.node.routing import RoutingRules, load_routes
from worker.errors import InputError
from worker.jobs.folder import JobFolder
from worker.jobs.spec import JobSpec
from worker.stages.assemble.case import Assembly, Case, assemble_cases
from worker.stages.assemble.rules import load_rules
from worker.stages.export.algorithm import MANUFACTURER

log = logging.getLogger(__name__)

#: The owner recorded on jobs the node makes (API keys' owners are 12 hex digits).
NODE_OWNER = "dicom-node"


class StudyWatcher:
    """Finds the patients whose studies became complete and turns them into jobs."""

    def __init__(
        self,
        settings: Settings,
        database: Database,
        queue: JobQueue,
        *,
        rules: RoutingRules | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.database = database
        self.queue = queue
        self.rules = rules or load_routes(settings.node_routes)
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, interval_s: float = 1.0) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="study-watcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            try:
                self.run_once()
            except Exception:
                # The node must go on receiving; the next round tries again.
                log.exception("study watcher round failed")

    def run_once(self) -> list[str]:
        """Complete every study that is due; returns the ids of the jobs made."""
        made: list[str] = []
        with self.database.session() as session:
            for study in self._due(session):
                made += self._complete(session, study)
        return made

    def _due(self, session: Session) -> list[NodeStudy]:
        settled_before = self.clock() - timedelta(seconds=self.settings.node_quiet_period_s)
        candidates = session.scalars(
            select(NodeStudy).where(NodeStudy.pending.is_(True), NodeStudy.last_released_at <= settled_before)
        )
        return [study for study in candidates if not _still_receiving(session, study.patient_key)]

    def _complete(self, session: Session, study: NodeStudy) -> list[str]:
        instances = list(
            session.scalars(
                select(NodeInstance).where(
                    NodeInstance.patient_key == study.patient_key, NodeInstance.state == "accepted"
                )
            )
        )
        scratch_root = self.settings.storage_root / "node" / "scratch"
        scratch_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
            files = [self.settings.storage_root / row.path for row in instances]
            try:
                assembly = assemble_cases(files, Path(scratch), load_rules(self.settings.role_rules))
            except InputError as error:
                # Not a case yet (no RTDOSE, no follow-up …): a later series may complete it.
                self._settle(session, study, "incomplete", error.message, _listing(instances, None))
                return []
        made, notes, jobs = self._jobs_of(session, study, assembly)
        if made is None:
            return []  # the queue is down: the study stays pending and is tried again
        state = "complete" if jobs else "incomplete"
        self._settle(session, study, state, "; ".join(notes) or None, _listing(instances, assembly), jobs)
        return made

    def _jobs_of(
        self, session: Session, study: NodeStudy, assembly: Assembly
    ) -> tuple[list[str] | None, list[str], list[str]]:
        """(jobs made now, or None when the queue refused; notes; every job of the study)."""
        made: list[str] = []
        notes: list[str] = []
        jobs = list(study.job_ids)
        for case in assembly.cases:
            route = self.rules.route_for(case, study.calling_aes)
            label = f"{case.task} follow-up ({case.followup_kind})"
            if route is None:
                notes.append(f"no route runs the {label}")
                continue
            key = job_key(study.patient_key, case)
            existing = session.scalar(select(JobRecord.id).where(JobRecord.job_key == key))
            if existing is not None:
                jobs.append(existing)
                continue
            try:
                job_id = self._make_job(session, case, self.rules.spec_for(route, case), key)
            except InputError as error:
                notes.append(f"the {label} cannot run: {error.message}")
                continue
            except ServiceProblem:
                return None, notes, jobs
            made.append(job_id)
            jobs.append(job_id)
        return made, notes, list(dict.fromkeys(jobs))

    def _make_job(self, session: Session, case: Case, spec: JobSpec, key: str) -> str:
        folder = JobFolder.under(self.settings.storage_root, uuid.uuid4().hex).create()
        try:
            for path in _case_files(case):
                _link(path, folder.inputs / path.name)
            record = admit_job(
                session, self.settings, self.queue, folder, spec, NODE_OWNER, job_key=key, source="node"
            )
        except BaseException:
            folder.remove()
            raise
        log.info("node: job %s made for %s (%s)", record.id, case.patient_alias, case.task)
        return record.id

    def _settle(
        self,
        session: Session,
        study: NodeStudy,
        state: str,
        detail: str | None,
        series: list[dict[str, Any]],
        jobs: list[str] | None = None,
    ) -> None:
        study.state, study.detail, study.series, study.pending = state, detail, series, False
        study.settled_at = self.clock()
        if jobs is not None:
            study.job_ids = jobs
        session.commit()
        log.info("node: study of %s %s", study.patient_alias, state)


def job_key(patient_key: str, case: Case) -> str:
    """The idempotency key of a follow-up's job: patient, follow-up series, input instances."""
    instances = sorted(i.sop_instance_uid for series in _case_series(case) for i in series.instances)
    digest = hashlib.sha256("\n".join([patient_key, case.followup.uid, *instances]).encode())
    return digest.hexdigest()


def _case_series(case: Case) -> list[Any]:
    """The series a job of ``case`` reads: not a SEG (never an input), and none of our own results
    (a PACS that pushes the whole patient again sends them back: they must not re-trigger)."""
    series = [case.followup, case.planning_ct, *case.rtdose, *case.rtplan, *case.rtstruct, *case.reg]
    return [s for s in series if s.text("Manufacturer") != MANUFACTURER]


def _case_files(case: Case) -> list[Path]:
    return [path for series in _case_series(case) for path in series.files]


def _still_receiving(session: Session, patient_key: str) -> bool:
    """An association of this patient is still open (its instances are not accepted yet)."""
    query = select(NodeInstance.id).where(
        NodeInstance.patient_key == patient_key, NodeInstance.state == "received"
    )
    return session.scalar(query.limit(1)) is not None


def _listing(instances: list[NodeInstance], assembly: Assembly | None) -> list[dict[str, Any]]:
    """The series held for the patient, each with its role in the assembled cases (if any)."""
    roles = _roles(assembly) if assembly else {}
    series: dict[str, dict[str, Any]] = {}
    for row in instances:
        entry = series.setdefault(
            row.series_uid,
            {"series_uid": row.series_uid, "modality": row.modality, "instances": 0, "role": None},
        )
        entry["instances"] += 1
        entry["role"] = roles.get(row.series_uid)
    return list(series.values())


def _roles(assembly: Assembly) -> dict[str, str]:
    roles: dict[str, str] = {}
    for case in assembly.cases:
        roles[case.followup.uid] = f"follow-up ({case.followup_kind})"
        roles[case.planning_ct.uid] = "planning CT"
        for role, group in (("RTDOSE", case.rtdose), ("RTPLAN", case.rtplan), ("RTSTRUCT", case.rtstruct)):
            roles.update({s.uid: role for s in group})
        roles.update({s.uid: "spatial registration" for s in case.reg})
        roles.update({s.uid: "segmentation" for s in case.seg})
    return roles


def _link(source: Path, target: Path) -> None:
    """A hard link (no copy of a study per job); a copy where the file system has none."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
