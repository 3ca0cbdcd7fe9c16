"""Where the node's instances land: files under ``<storage root>/node/`` and rows in the job
database (``NodeAssociation``, ``NodeInstance``, ``NodeStudy``).

An instance is *received* while its association is open, *accepted* once the association is
released, and set *aside* (kept, never used) when it is aborted: only a released association
tells that the sender finished what it meant to send.

File names and log lines carry hashes and association ids, never a PatientID, a name or a UID in
clear: the patient is ``patient_key`` (SHA-256 of the PatientID) or its short alias.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import Any
from uuid import uuid4

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.engine import Database
from service.db.models import NodeAssociation, NodeInstance, NodeStudy, utc_now
from service.node.header import (
    HeaderError,
    InstanceHeader,
    check_extent,
    patient_alias,
    read_file_meta,
    read_header,
)
from service.node.incoming import was_unwritten

log = logging.getLogger(__name__)

#: Instance states (``NodeInstance.state``) and association outcomes (``NodeAssociation.outcome``).
RECEIVED, ACCEPTED, ASIDE = "received", "accepted", "aside"
OPEN, RELEASED, ABORTED = "open", "released", "aborted"

_COPY_CHUNK_BYTES = 1024**2
#: How often an open association's counts and its patients' last arrival are written (seconds).
_PROGRESS_INTERVAL_S = 1.0


class StoreStatus(IntEnum):
    """The C-STORE statuses the node answers with (PS3.4 Table B.2-1)."""

    SUCCESS = 0x0000
    #: Refused, out of resources: less than ``node_min_free_bytes`` free on the storage root, or
    #: the instance did not fit on it (see ``service.node.incoming``).
    OUT_OF_SPACE = 0xA700
    #: Refused, out of resources: the patient holds ``node_max_pending_instances`` already.
    TOO_MANY_PENDING = 0xA701
    #: Error, data set does not match SOP class: the dataset's SOPClassUID is not the command's.
    SOP_CLASS_MISMATCH = 0xA900
    #: Error, cannot understand: the header is unreadable or lacks an attribute the node needs.
    UNREADABLE = 0xC210
    #: Error, cannot understand: the dataset's SOPInstanceUID is not the one the command announced.
    INSTANCE_MISMATCH = 0xC212
    #: Error, cannot understand: something unexpected failed in the node (logged, no patient data).
    NODE_FAILURE = 0xC2FF


# Statements built once: building them per instance costs more than running them.
_HELD = (RECEIVED, ACCEPTED)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIND_HELD_INSTANCE = (
    select(NodeInstance.id)
    .where(
        NodeInstance.patient_key == bindparam("key"),
        NodeInstance.sop_instance_uid == bindparam("uid"),
        NodeInstance.state.in_(_HELD),
    )
    .limit(1)
)
#: Instances of a patient that no completed study has used yet: those received since the
#: watcher last settled the patient's study (the cap is per delivery, not per lifetime).
_COUNT_UNUSED = (
    select(func.count())
    .select_from(NodeInstance)
    .where(
        NodeInstance.patient_key == bindparam("key"),
        NodeInstance.state.in_(_HELD),
        NodeInstance.received_at
        > func.coalesce(
            select(NodeStudy.settled_at).where(NodeStudy.patient_key == bindparam("key")).scalar_subquery(),
            bindparam("epoch"),
        ),
    )
)
_INSERT_INSTANCE = insert(NodeInstance)
_SET_COUNTS = (
    update(NodeAssociation)
    .where(NodeAssociation.id == bindparam("assoc"))
    .values(instances=bindparam("count"), bytes=bindparam("total"))
)
_TOUCH_STUDY = (
    update(NodeStudy)
    .where(NodeStudy.patient_key == bindparam("key"))
    .values(last_received_at=bindparam("now"))
)


@dataclass
class _Tally:
    """What the inbox keeps in memory about an open association, to spare rows per instance:
    the association's counts and its patients' ``last_received_at`` are written about once a
    second (and exactly at the end), not once per instance."""

    calling_ae: str
    instances: int = 0
    bytes: int = 0
    #: When the counts were last written (``time.monotonic()``).
    written_at: float = 0.0
    #: Per patient: instances the node holds (counted once, then followed here).
    held: dict[str, int] = field(default_factory=dict)
    #: Per patient: when its ``NodeStudy`` was last written (``time.monotonic()``).
    touched: dict[str, float] = field(default_factory=dict)


class Inbox:
    """Stores instances and records them; one per node process, shared by its associations.

    Thread-safe: the SCP runs one thread per association. The short critical section (the
    duplicate check, a rename, the rows) is serialised by a lock; header reading and the
    association's network traffic run in parallel.
    """

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.database = database
        self.storage_root = settings.storage_root.resolve()
        self.node_root = self.storage_root / "node"
        #: pynetdicom's temporary files go here: same file system as the store, never a tmpfs.
        self.incoming_dir = self.node_root / "incoming"
        self.incoming_dir.mkdir(parents=True, exist_ok=True)
        self.database.prepare()  # the store path uses the engine directly
        self._lock = threading.Lock()
        self._tallies: dict[str, _Tally] = {}

    # -- associations -----------------------------------------------------------------------

    def open_association(self, assoc_id: str, calling_ae: str, peer_host: str) -> None:
        """Record an accepted association (outcome "open")."""
        with self._lock, self.database.session() as session:
            row = NodeAssociation(
                id=assoc_id, calling_ae=calling_ae[:16], peer_host=peer_host[:64], outcome=OPEN
            )
            session.add(row)
            session.commit()
            self._tallies[assoc_id] = _Tally(calling_ae=row.calling_ae)

    def close_association(self, assoc_id: str, released: bool) -> None:
        """End an association once: released → its instances are accepted and their patients'
        studies pending; aborted → its instances are set aside. Later calls do nothing."""
        with self._lock, self.database.session() as session:
            self._tallies.pop(assoc_id, None)
            association = session.get(NodeAssociation, assoc_id)
            if association is None or association.outcome != OPEN:
                return
            now = utc_now()
            if released:
                patients = self._accept(session, assoc_id, now)
            else:
                patients = self._set_aside(session, assoc_id)
            counts = select(func.count(), func.coalesce(func.sum(NodeInstance.size), 0))
            association.instances, association.bytes = session.execute(
                counts.where(NodeInstance.association_id == assoc_id)
            ).one()
            association.outcome = RELEASED if released else ABORTED
            association.ended_at = now
            session.commit()
        log.info(
            "association %s %s: %d instances, %d bytes, %d patient(s)",
            assoc_id,
            association.outcome,
            association.instances,
            association.bytes,
            len(patients),
        )

    def recover(self) -> None:
        """At start-up: associations left open by a previous process count as aborted, and its
        temporary files (instances never answered) are deleted. Hence one running node per
        database and storage root: a second one would end the first one's associations."""
        with self.database.session() as session:
            still_open = select(NodeAssociation.id).where(NodeAssociation.outcome == OPEN)
            leftovers = session.scalars(still_open).all()
        for assoc_id in leftovers:
            self.close_association(assoc_id, released=False)
        for stale in self.incoming_dir.iterdir():
            if stale.is_file():
                stale.unlink(missing_ok=True)

    # -- instances --------------------------------------------------------------------------

    def store(self, assoc_id: str, file_meta: FileMetaDataset, dataset_path: Path) -> int:
        """File one received instance; returns the C-STORE status.

        ``file_meta`` is the meta the command and presentation context imply (pynetdicom's
        ``event.file_meta``); ``dataset_path`` the received bytes, as a Part 10 file or a bare
        dataset in ``file_meta``'s transfer syntax.
        """
        if was_unwritten(dataset_path):
            log.warning("association %s: instance refused, the storage root is full", assoc_id)
            return StoreStatus.OUT_OF_SPACE
        if shutil.disk_usage(self.storage_root).free < self.settings.node_min_free_bytes:
            log.warning("association %s: instance refused, storage root below the free-space floor", assoc_id)
            return StoreStatus.OUT_OF_SPACE
        with dataset_path.open("rb") as fp:
            received_meta, offset = read_file_meta(fp)
            syntax = UID(file_meta.TransferSyntaxUID)
            try:
                fp.seek(offset)
                header = read_header(fp, syntax)
                fp.seek(offset)
                check_extent(fp, syntax)
            except HeaderError as error:
                log.warning("association %s: instance refused: %s", assoc_id, error)
                return StoreStatus.UNREADABLE
        if header.sop_instance_uid != file_meta.MediaStorageSOPInstanceUID:
            log.warning("association %s: instance refused: SOPInstanceUID is not the command's", assoc_id)
            return StoreStatus.INSTANCE_MISMATCH
        if header.sop_class_uid != file_meta.MediaStorageSOPClassUID:
            log.warning("association %s: instance refused: SOPClassUID is not the command's", assoc_id)
            return StoreStatus.SOP_CLASS_MISMATCH
        reusable = received_meta is not None and _same_meta(received_meta, file_meta)
        with self._lock:
            return self._record(assoc_id, header, file_meta, dataset_path, offset, reusable)

    def accepted_files(self, patient_key: str) -> list[Path]:
        """Absolute paths of the patient's accepted instances, in the order they arrived."""
        with self.database.session() as session:
            paths = session.scalars(
                select(NodeInstance.path)
                .where(NodeInstance.patient_key == patient_key, NodeInstance.state == ACCEPTED)
                .order_by(NodeInstance.id)
            ).all()
        return [self.storage_root / path for path in paths]

    def instance_path(self, header: InstanceHeader) -> Path:
        """Where an instance is kept while in use (absolute)."""
        return self.node_root / "patients" / header.patient_key[:16] / header.file_name

    def _record(
        self,
        assoc_id: str,
        header: InstanceHeader,
        file_meta: FileMetaDataset,
        dataset_path: Path,
        offset: int,
        reusable: bool,
    ) -> int:
        """Check, place and record one instance; the caller holds the lock."""
        tally = self._tallies.get(assoc_id)
        if tally is None:
            raise LookupError(f"association {assoc_id} is not open")
        # Core statements on a connection: the ORM's unit of work costs more than the instance.
        with self.database.engine.begin() as connection:
            refusal = self._refusal(connection, tally, header, assoc_id)
        if refusal is not None:
            return refusal
        target = self.instance_path(header)
        try:
            _place(dataset_path, target, file_meta, offset, reusable)
        except OSError as error:
            log.error("association %s: cannot write an instance (%s)", assoc_id, error.strerror)
            return StoreStatus.OUT_OF_SPACE
        try:
            with self.database.engine.begin() as connection:
                self._insert(connection, tally, header, target, assoc_id)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        return StoreStatus.SUCCESS

    def _refusal(
        self, connection: Connection, tally: _Tally, header: InstanceHeader, assoc_id: str
    ) -> int | None:
        """Why the instance is not stored: a duplicate (success, one copy kept) or the patient's
        cap; None to store it."""
        key = header.patient_key
        duplicate = connection.execute(
            _FIND_HELD_INSTANCE, {"key": key, "uid": header.sop_instance_uid}
        ).first()
        if duplicate is not None:
            # Re-sends are normal (a PACS retries a whole study): say success, keep one copy.
            log.debug("association %s: duplicate instance %s dropped", assoc_id, header.file_name)
            return StoreStatus.SUCCESS
        if key not in tally.held:
            tally.held[key] = int(
                connection.execute(_COUNT_UNUSED, {"key": key, "epoch": _EPOCH}).scalar_one()
            )
        if tally.held[key] >= self.settings.node_max_pending_instances:
            log.warning("association %s: instance refused, %s holds too many", assoc_id, key[:10])
            return StoreStatus.TOO_MANY_PENDING
        return None

    def _insert(
        self, connection: Connection, tally: _Tally, header: InstanceHeader, target: Path, assoc_id: str
    ) -> None:
        key, size, clock = header.patient_key, target.stat().st_size, time.monotonic()
        relative = target.relative_to(self.storage_root)
        connection.execute(_INSERT_INSTANCE, _instance_row(header, relative, size, assoc_id))
        tally.held[key] += 1
        tally.instances += 1
        tally.bytes += size
        touched = tally.touched.get(key)
        if touched is None:
            _upsert_study(connection, header, tally.calling_ae, utc_now())
        elif clock - touched >= _PROGRESS_INTERVAL_S:
            connection.execute(_TOUCH_STUDY, {"key": key, "now": utc_now()})
        if touched is None or clock - touched >= _PROGRESS_INTERVAL_S:
            tally.touched[key] = clock
        if clock - tally.written_at >= _PROGRESS_INTERVAL_S:
            connection.execute(
                _SET_COUNTS, {"assoc": assoc_id, "count": tally.instances, "total": tally.bytes}
            )
            tally.written_at = clock

    def _accept(self, session: Session, assoc_id: str, now: datetime) -> list[str]:
        mine = (NodeInstance.association_id == assoc_id, NodeInstance.state == RECEIVED)
        patients = list(session.scalars(select(NodeInstance.patient_key).where(*mine).distinct()).all())
        session.execute(update(NodeInstance).where(*mine).values(state=ACCEPTED))
        if patients:
            session.execute(
                update(NodeStudy)
                .where(NodeStudy.patient_key.in_(patients))
                .values(pending=True, last_released_at=now, state="receiving", detail=None)
            )
        return patients

    def _set_aside(self, session: Session, assoc_id: str) -> list[str]:
        """Move the association's files to ``node/aside/<assoc_id>/``: kept, never used."""
        aside_dir = self.node_root / "aside" / assoc_id
        mine = (NodeInstance.association_id == assoc_id, NodeInstance.state == RECEIVED)
        instances = session.scalars(select(NodeInstance).where(*mine)).all()
        for instance in instances:
            source = self.storage_root / instance.path
            target = aside_dir / source.name
            aside_dir.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(source, target)
            except FileNotFoundError:
                if not target.exists():
                    log.warning("association %s: instance %s missing when set aside", assoc_id, source.name)
            instance.path = str(target.relative_to(self.storage_root))
            instance.state = ASIDE
        return sorted({instance.patient_key for instance in instances})


def _same_meta(received: FileMetaDataset, expected: FileMetaDataset) -> bool:
    return all(
        received.get(keyword) == expected.get(keyword)
        for keyword in ("TransferSyntaxUID", "MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID")
    )


def _place(source: Path, target: Path, file_meta: FileMetaDataset, offset: int, reusable: bool) -> None:
    """Put the instance at ``target`` atomically: a rename when ``source`` already is the Part 10
    file we want on the same file system (the usual case), else a streamed copy behind our meta."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if reusable and source.stat().st_dev == target.parent.stat().st_dev:
        # pynetdicom deletes its temporary file after the handler; it then finds it gone (fine).
        os.replace(source, target)
        return
    partial = target.with_name(f".{target.name}.{uuid4().hex}.part")
    try:
        with source.open("rb") as src, partial.open("xb") as dst:
            dst.write(b"\x00" * 128 + b"DICM")
            write_file_meta_info(DicomFileLike(dst), file_meta, enforce_standard=True)
            src.seek(offset)
            shutil.copyfileobj(src, dst, _COPY_CHUNK_BYTES)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _instance_row(header: InstanceHeader, relative: Path, size: int, assoc_id: str) -> dict[str, Any]:
    return {
        "patient_key": header.patient_key,
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "study_uid": header.study_uid,
        "series_uid": header.series_uid,
        "modality": header.modality[:16],
        "path": str(relative),
        "size": size,
        "association_id": assoc_id,
        "received_at": utc_now(),
        "state": RECEIVED,
    }


def _upsert_study(connection: Connection, header: InstanceHeader, calling_ae: str, now: datetime) -> None:
    """Create or update the patient's ``NodeStudy``: alias, last arrival, who sent it."""
    key = header.patient_key
    found = connection.execute(select(NodeStudy.calling_aes).where(NodeStudy.patient_key == key)).first()
    if found is None:
        study = {
            "patient_key": key,
            "patient_alias": patient_alias(header.patient_id),
            "first_received_at": now,
            "last_received_at": now,
            "pending": False,
            "state": "receiving",
            "series": [],
            "job_ids": [],
            "calling_aes": [calling_ae],
        }
        connection.execute(insert(NodeStudy).values(study))
        return
    calling_aes = list(found.calling_aes or [])
    if calling_ae not in calling_aes:
        calling_aes.append(calling_ae)
    connection.execute(
        update(NodeStudy)
        .where(NodeStudy.patient_key == key)
        .values(last_received_at=now, calling_aes=calling_aes)
    )
