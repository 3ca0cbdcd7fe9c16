"""The DICOM node's bad-input catalogue: one real ``NodeServer`` (real sockets, real SQLite rows,
real files), abused one way per row, with dcmtk's storescu/echoscu as the well-behaved peers.

At module start a good study (the *sentinel*) is pushed with storescu. Each row then checks the
answer the abusing peer got (DIMSE status, A-ASSOCIATE-RJ reason, A-ABORT or a closed
connection) and, in one helper, that the node is unharmed: every association the row opened
has ended and was recorded with the expected outcome; instances filed as good (accepted) and
set aside (kept, counted, never used) are the expected numbers; no temporary file is left
behind; the sentinel's rows and files are unchanged; a C-ECHO from an allowed peer succeeds.

Cases (name → expected answer; what the node records):

- unknown-sop-class-proposed → context rejected (3, abstract syntax not supported); released, 0
- private-class-on-a-ct-context → A-ABORT (pynetdicom serves no such class); the good instance
  sent before it is set aside, no temporary file left
- dataset-sop-class-not-the-commands → 0xA900; the good instance after it is accepted
- dataset-instance-uid-not-the-commands → 0xC212; idem
- zero-length-dataset → 0xC210; idem
- lying-length-in-the-header → 0xC210; idem
- lying-length-of-the-pixel-data → 0xC210; idem
- lying-vr-in-the-header → 0xC210; idem
- dataset-truncated-last-fragment → 0xC210; idem
- dataset-truncated-then-abort → closed; the instance before it set aside, no temporary file left
- association-never-released → 0x0000 then A-ABORT after the network timeout, another peer
  served meanwhile; its instance set aside
- silent-inside-a-pdu → closed after the network timeout; its instance set aside
- tcp-connection-sends-nothing → closed after the ACSE timeout; no association recorded
- http-request-on-the-port → A-ABORT, closed; none recorded
- p-data-before-association → A-ABORT, closed; none recorded
- pdu-declaring-4-gib-before-association → closed before the body is read (no 4 GiB buffer)
- pdu-declaring-4-gib-inside-association → closed; its earlier instance set aside
- unknown-calling-ae → A-ASSOCIATE-RJ 1/1/3
- known-ae-from-another-host (127.0.0.2) → A-ASSOCIATE-RJ 1/1/3
- wrong-called-ae → A-ASSOCIATE-RJ 1/1/7
- more-associations-than-allowed → the extra one A-ASSOCIATE-RJ 2/3/2; the others finish
- second-patient-mixed-into-a-study → all 0x0000; the stray instance kept apart (own patient)
- study-of-3000-instances → 3000 × 0x0000 in one association; 3000 rows, one patient, once
- over-the-pending-instance-cap → 5 × 0x0000 then 3 × 0xA701 (cap lowered to 5); 5 accepted
- re-sent-instance → 0x0000 each time; stored once
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage
from sqlalchemy import select

from service.config import NodePeer, Settings
from service.db.engine import Database
from service.db.models import NodeAssociation, NodeInstance, NodeStudy
from service.node.header import patient_key
from service.node.server import NodeServer
from tests.badinput.node_fixtures import (
    ABORT,
    ASSOCIATE_RJ,
    P_DATA,
    PRIVATE_SOP_CLASS,
    RELEASE_RP,
    Instance,
    RawPeer,
    context_results,
    encoded,
    p_data,
    reject_reason,
    short_uid,
    tiny_ct,
    with_length,
    with_vr,
    write_tiny_study,
)
from tests.conftest import system_tool
from tests.patients import write_patient

PEER_AE = "PACS"
#: Seconds of silence after which the node aborts an association (and its ACSE/ARTIM timeout).
NETWORK_TIMEOUT_S = 3.0
MAX_ASSOCIATIONS = 3
#: Seconds a dcmtk tool or a wait may take before the test fails instead of hanging.
TOOL_TIMEOUT_S = 120
CT_CONTEXT = [(1, CTImageStorage, ExplicitVRLittleEndian)]


# -- the node, its peers, the sentinel ----------------------------------------------------------


@dataclass
class Stage:
    """What every case works with: the running node, its database, dcmtk and a scratch folder."""

    node: NodeServer
    database: Database
    tools: dict[str, str]
    scratch: Path
    sentinel: dict[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return self.node.address

    @property
    def ae_title(self) -> str:
        return self.node.settings.node_ae_title

    def raw(self, source_host: str | None = None) -> RawPeer:
        return RawPeer(self.address, source_host=source_host)

    def raw_association(self, contexts: list[tuple[int, str, str]] = CT_CONTEXT) -> RawPeer:
        """A raw peer with an association on ``contexts`` (all accepted)."""
        peer = self.raw()
        accept = peer.associate(contexts, PEER_AE, self.ae_title)
        assert context_results(accept) == {cid: 0 for cid, *_ in contexts}
        return peer

    def echo(self) -> subprocess.CompletedProcess[str]:
        """A C-ECHO from the allowed peer (dcmtk's echoscu)."""
        host, port = self.address
        command = [self.tools["echoscu"], "-aet", PEER_AE, "-aec", self.ae_title, host, str(port)]
        return subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)

    def storescu(self, *paths: Path, options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
        """Send files (``-R``: propose only their SOP classes), one association; ``-v`` prints
        one "Received Store Response" line per instance."""
        host, port = self.address
        command = [self.tools["storescu"], "-v", "-R", *options, "-aet", PEER_AE, "-aec", self.ae_title]
        command += [host, str(port), *map(str, paths)]
        # dcmtk leaves Nagle's algorithm on: with delayed ACKs each instance would wait ~40 ms.
        env = {**os.environ, "TCP_NODELAY": "1"}
        return subprocess.run(command, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S, env=env)


def _store_responses(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The C-STORE outcomes storescu -v printed, in order ("Success", "Refused: OutOfResources" …)."""
    return re.findall(r"Received Store Response \(([^)]*)\)", result.stdout + result.stderr)


def _dcmtk_tools() -> dict[str, str]:
    tools = {}
    for name in ("storescu", "echoscu"):
        path = system_tool(name)
        if path is None:
            pytest.fail(f"{name} (dcmtk) is not installed (.ci/run installs it)", pytrace=False)
        tools[name] = path
    return tools


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """The node with short timeouts and a small association limit, and the sentinel pushed."""
    root = tmp_path_factory.mktemp("badinput-node")
    settings = Settings(
        storage_root=root / "storage",
        node_peers=[NodePeer(ae_title=PEER_AE, host="127.0.0.1")],
        node_network_timeout_s=NETWORK_TIMEOUT_S,
        node_max_associations=MAX_ASSOCIATIONS,
        node_quiet_period_s=2,
        node_min_free_bytes=0,
    ).model_copy(update={"node_port": 0})  # the OS picks a free port
    database = Database(settings.sqlalchemy_url)
    node = NodeServer(settings, database)
    node.start()
    try:
        stage = Stage(node, database, _dcmtk_tools(), root / "scratch")
        stage.scratch.mkdir()
        stage.sentinel = _push_sentinel(stage, root / "sentinel")
        yield stage
    finally:
        node.stop()
        database.dispose()


def _push_sentinel(stage: Stage, folder: Path) -> dict[str, Any]:
    patient = write_patient(folder, patient_id="SENTINEL-1")
    sources = sorted(folder.rglob("*.dcm"))
    result = stage.storescu(*sources)
    assert _store_responses(result) == ["Success"] * len(sources), result.stderr[-2000:]
    _wait_until_idle(stage)
    snapshot = _sentinel_state(stage, patient_key(patient.patient_id))
    assert len(snapshot["rows"]) == len(sources)
    assert {row[2] for row in snapshot["rows"]} == {"accepted"}
    return {"key": patient_key(patient.patient_id), "snapshot": snapshot}


def _sentinel_state(stage: Stage, key: str) -> dict[str, Any]:
    """The sentinel's instance rows, its study row and its files (identity and content)."""
    root = stage.node.inbox.storage_root
    with stage.database.session() as session:
        instances = session.scalars(select(NodeInstance).where(NodeInstance.patient_key == key)).all()
        rows = sorted((i.sop_instance_uid, i.path, i.state, i.size, i.association_id) for i in instances)
        study = session.get(NodeStudy, key)
        assert study is not None
        study_row = (study.pending, study.state, study.first_received_at, study.last_released_at)
    files = {}
    for _, path, *_ in rows:
        stat = (root / path).stat()
        digest = hashlib.sha256((root / path).read_bytes()).hexdigest()
        files[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, digest)
    return {"rows": rows, "study": study_row, "files": files}


# -- waiting and the post-conditions ------------------------------------------------------------


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _associations(stage: Stage) -> list[NodeAssociation]:
    with stage.database.session() as session:
        return list(session.scalars(select(NodeAssociation)).all())


def _wait_until_idle(stage: Stage) -> None:
    """Every recorded association has ended and pynetdicom holds no association thread."""
    _wait_for(lambda: all(a.outcome != "open" for a in _associations(stage)), "associations to end")
    # The server's own list (no public accessor): rejected and refused connections end there.
    server = stage.node._server
    assert server is not None
    _wait_for(lambda: not server.active_associations, "association threads to end")


@dataclass(frozen=True)
class Expected:
    """A row's expected answer and what the node must have recorded of the row's associations."""

    answer: str
    #: Outcomes of the associations the node accepted during the row ("released", "aborted").
    associations: tuple[str, ...] = ()
    #: Instances of those associations filed as good (accepted) and set aside (kept, unused).
    accepted: int = 0
    aside: int = 0


@dataclass(frozen=True)
class Before:
    """What the node held before a row: its associations and temporary files."""

    associations: set[str]
    temporary_files: set[Path]

    @classmethod
    def of(cls, stage: Stage) -> Before:
        incoming = set(stage.node.inbox.incoming_dir.iterdir())
        return cls({association.id for association in _associations(stage)}, incoming)


def _assert_unharmed(stage: Stage, before: Before, expected: Expected) -> None:
    _wait_until_idle(stage)
    mine = [a for a in _associations(stage) if a.id not in before.associations]
    assert sorted(a.outcome for a in mine) == sorted(expected.associations)
    with stage.database.session() as session:
        for association in mine:
            rows = session.scalars(select(NodeInstance).where(NodeInstance.association_id == association.id))
            states = [row.state for row in rows]
            # An association's instances share its fate, and its counts are exact.
            want = {"released": {"accepted"}, "aborted": {"aside"}}[association.outcome]
            assert set(states) <= want, (association.outcome, states)
            assert association.instances == len(states)
        states = [
            row.state
            for row in session.scalars(
                select(NodeInstance).where(NodeInstance.association_id.in_([a.id for a in mine]))
            )
        ]
    assert (states.count("accepted"), states.count("aside")) == (expected.accepted, expected.aside)
    root = stage.node.inbox.storage_root
    for aside in (a for a in mine if a.outcome == "aborted" and a.instances):
        assert len(list((root / "node" / "aside" / aside.id).iterdir())) == aside.instances
    left = set(stage.node.inbox.incoming_dir.iterdir()) - before.temporary_files
    assert not left, "temporary files left behind"
    assert _sentinel_state(stage, stage.sentinel["key"]) == stage.sentinel["snapshot"]
    echo = stage.echo()
    assert echo.returncode == 0, echo.stderr


# -- answers, as the table spells them ----------------------------------------------------------

_PDU_NAMES = {ABORT: "A-ABORT", ASSOCIATE_RJ: "A-ASSOCIATE-RJ", P_DATA: "P-DATA", RELEASE_RP: "A-RELEASE-RP"}


def status(code: int) -> str:
    return f"C-STORE 0x{code:04X}"


def rejected(result: int, source: int, reason: int) -> str:
    return f"A-ASSOCIATE-RJ {result}/{source}/{reason}"


def closing(kinds: list[int]) -> str:
    """What the node sent before closing the connection: "A-ABORT, closed" or "closed"."""
    return ", ".join([*(_PDU_NAMES.get(k, f"PDU 0x{k:02X}") for k in dict.fromkeys(kinds)), "closed"])


# -- the cases ----------------------------------------------------------------------------------


def _ct() -> Any:
    """A fresh tiny CT slice of a fresh patient (rows of different cases never mix)."""
    return tiny_ct(f"BAD-{short_uid()[-8:]}", short_uid(), short_uid(), 1)


def _bad_then_good(
    stage: Stage, bad: Instance, *, sop_class: str | None = None, uid: str | None = None
) -> str:
    """Store ``bad`` (the command announcing ``sop_class``/``uid`` when given), then a good
    instance on the same association: the bad one must fail alone. Returns the bad one's answer."""
    with stage.raw_association() as peer:
        answer = peer.store(1, sop_class or bad.sop_class, uid or bad.sop_instance, bad.data)
        good = encoded(_ct())
        assert peer.store(1, good.sop_class, good.sop_instance, good.data) == 0x0000
        assert peer.release() == RELEASE_RP
    return status(answer)


def unknown_sop_class_proposed(stage: Stage) -> str:
    with stage.raw() as peer:
        accept = peer.associate([(1, PRIVATE_SOP_CLASS, ExplicitVRLittleEndian)], PEER_AE, stage.ae_title)
        result = context_results(accept)[1]
        assert peer.release() == RELEASE_RP
    return f"context result {result}"


def private_class_on_a_ct_context(stage: Stage) -> str:
    with stage.raw_association() as peer:
        good = encoded(_ct())
        assert peer.store(1, good.sop_class, good.sop_instance, good.data) == 0x0000
        private = encoded(_ct(), SOPClassUID=PRIVATE_SOP_CLASS)
        peer.send_command(1, private.sop_class, private.sop_instance)
        peer.send_dataset(1, private.data)
        return closing(peer.read_until_closed())


def dataset_sop_class_not_the_commands(stage: Stage) -> str:
    return _bad_then_good(stage, encoded(_ct(), SOPClassUID=MRImageStorage), sop_class=CTImageStorage)


def dataset_instance_uid_not_the_commands(stage: Stage) -> str:
    return _bad_then_good(stage, encoded(_ct()), uid=short_uid())


def zero_length_dataset(stage: Stage) -> str:
    return _bad_then_good(stage, Instance(CTImageStorage, short_uid(), b""))


def lying_length_in_the_header(stage: Stage) -> str:
    good = encoded(_ct())
    lie = with_length(good.data, (0x0010, 0x0010), b"PN", 0xFFF0)  # PatientName "swallows" the rest
    return _bad_then_good(stage, Instance(good.sop_class, good.sop_instance, lie))


def lying_length_of_the_pixel_data(stage: Stage) -> str:
    good = encoded(_ct())
    lie = with_length(good.data, (0x7FE0, 0x0010), b"OW", 1024**2)  # 128 bytes sent, 1 MiB declared
    return _bad_then_good(stage, Instance(good.sop_class, good.sop_instance, lie))


def lying_vr_in_the_header(stage: Stage) -> str:
    good = encoded(_ct())
    lie = with_vr(good.data, (0x0020, 0x000D), b"UI", b"ZZ")  # no such VR
    return _bad_then_good(stage, Instance(good.sop_class, good.sop_instance, lie))


def dataset_truncated_last_fragment(stage: Stage) -> str:
    good = encoded(_ct())
    return _bad_then_good(stage, Instance(good.sop_class, good.sop_instance, good.data[:-50]))


def dataset_truncated_then_abort(stage: Stage) -> str:
    with stage.raw_association() as peer:
        good = encoded(_ct())
        assert peer.store(1, good.sop_class, good.sop_instance, good.data) == 0x0000
        cut = encoded(_ct())
        peer.send_command(1, cut.sop_class, cut.sop_instance)
        peer.send_dataset(1, cut.data[:200], last=False)
        peer.abort()
        return closing(peer.read_until_closed())


def association_never_released(stage: Stage) -> str:
    with stage.raw_association() as peer:
        good = encoded(_ct())
        answer = peer.store(1, good.sop_class, good.sop_instance, good.data)
        # While it sits silent, another peer is served.
        echo = stage.echo()
        assert echo.returncode == 0, echo.stderr
        return f"{status(answer)}, then {closing(peer.read_until_closed())}"


def silent_inside_a_pdu(stage: Stage) -> str:
    with stage.raw_association() as peer:
        good = encoded(_ct())
        assert peer.store(1, good.sop_class, good.sop_instance, good.data) == 0x0000
        peer.send(struct.pack(">BBL", P_DATA, 0, 1000) + bytes(10))  # 10 of 1000 bytes, then nothing
        return closing(peer.read_until_closed())


def tcp_connection_sends_nothing(stage: Stage) -> str:
    with stage.raw() as peer:
        return closing(peer.read_until_closed())


def http_request_on_the_port(stage: Stage) -> str:
    with stage.raw() as peer:
        peer.send(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return closing(peer.read_until_closed())


def p_data_before_association(stage: Stage) -> str:
    with stage.raw() as peer:
        peer.send(p_data(1, b"\x00" * 64, command=True, last=True))
        return closing(peer.read_until_closed())


def _send_4_gib_pdu(peer: RawPeer, kind: int) -> str:
    """Declare a 4 GiB PDU, then try to send 64 MiB of its body: the node must close first."""
    peer.send(struct.pack(">BBL", kind, 0, 0xFFFFFFFF))
    chunk = bytes(1024**2)
    try:
        for _ in range(64):
            peer.send(chunk)
    except (BrokenPipeError, ConnectionResetError):
        return "closed before the body was read"
    return "the node read 64 MiB of the body"


def pdu_declaring_4_gib_before_association(stage: Stage) -> str:
    with stage.raw() as peer:
        return _send_4_gib_pdu(peer, 0x01)


def pdu_declaring_4_gib_inside_association(stage: Stage) -> str:
    with stage.raw_association() as peer:
        good = encoded(_ct())
        assert peer.store(1, good.sop_class, good.sop_instance, good.data) == 0x0000
        return _send_4_gib_pdu(peer, P_DATA)


def _reject(
    stage: Stage, *, calling: str = PEER_AE, called: str | None = None, host: str | None = None
) -> str:
    with stage.raw(source_host=host) as peer:
        return rejected(*reject_reason(peer.associate(CT_CONTEXT, calling, called or stage.ae_title)))


def unknown_calling_ae(stage: Stage) -> str:
    return _reject(stage, calling="STRANGER")


def known_ae_from_another_host(stage: Stage) -> str:
    return _reject(stage, host="127.0.0.2")  # loopback too, but not the peer's address


def wrong_called_ae(stage: Stage) -> str:
    return _reject(stage, called="NOT-THE-NODE")


def more_associations_than_allowed(stage: Stage) -> str:
    held = [stage.raw_association() for _ in range(MAX_ASSOCIATIONS)]
    try:
        answer = _reject(stage)
        for peer in held:  # the others finish normally
            good = encoded(_ct())
            assert peer.store(1, good.sop_class, good.sop_instance, good.data) == 0x0000
            assert peer.release() == RELEASE_RP
    finally:
        for peer in held:
            peer.close()
    return answer


def second_patient_mixed_into_a_study(stage: Stage) -> str:
    folder = stage.scratch / "mixed"
    study = short_uid()
    paths = write_tiny_study(folder, "MIXED-A", 4, study_uid=study)
    stray = write_tiny_study(folder / "stray", "MIXED-B", 1, study_uid=study)
    result = stage.storescu(*paths, *stray)
    _wait_until_idle(stage)
    with stage.database.session() as session:
        held = {
            key: session.scalars(select(NodeInstance.study_uid).where(NodeInstance.patient_key == key)).all()
            for key in (patient_key("MIXED-A"), patient_key("MIXED-B"))
        }
        studies = [session.get(NodeStudy, key) for key in held]
    # Kept apart: same StudyInstanceUID, two patients, two node studies.
    assert [len(uids) for uids in held.values()] == [4, 1]
    assert {uid for uids in held.values() for uid in uids} == {study}
    assert all(s is not None and s.pending for s in studies)
    return ", ".join(f"{n} × {r}" for r, n in _counted(_store_responses(result)))


def study_of_3000_instances(stage: Stage) -> str:
    folder = stage.scratch / "big"
    write_tiny_study(folder, "BIG-STUDY", 3000)
    result = stage.storescu(folder, options=("+sd",))
    _wait_until_idle(stage)
    with stage.database.session() as session:
        uids = session.scalars(
            select(NodeInstance.sop_instance_uid).where(NodeInstance.patient_key == patient_key("BIG-STUDY"))
        ).all()
        study = session.get(NodeStudy, patient_key("BIG-STUDY"))
    assert len(uids) == len(set(uids)) == 3000
    assert study is not None and study.pending
    return ", ".join(f"{n} × {r}" for r, n in _counted(_store_responses(result)))


def over_the_pending_instance_cap(stage: Stage) -> str:
    inbox = stage.node.inbox
    settings = inbox.settings
    inbox.settings = settings.model_copy(update={"node_max_pending_instances": 5})
    try:
        paths = write_tiny_study(stage.scratch / "capped", "CAPPED", 8)
        result = stage.storescu(*paths, options=("--no-halt",))
        _wait_until_idle(stage)
    finally:
        inbox.settings = settings
    return ", ".join(f"{n} × {r}" for r, n in _counted(_store_responses(result)))


def re_sent_instance(stage: Stage) -> str:
    [path] = write_tiny_study(stage.scratch / "resent", "RESENT", 1)
    first = stage.storescu(path, path)
    again = stage.storescu(path)
    _wait_until_idle(stage)
    rows = _rows_of(stage, patient_key("RESENT"))
    assert len(rows) == 1
    return ", ".join(f"{n} × {r}" for r, n in _counted(_store_responses(first) + _store_responses(again)))


def _rows_of(stage: Stage, key: str) -> list[NodeInstance]:
    with stage.database.session() as session:
        return list(session.scalars(select(NodeInstance).where(NodeInstance.patient_key == key)).all())


def _counted(responses: list[str]) -> list[tuple[str, int]]:
    """Consecutive equal responses counted: ["Success", "Success", "Refused"] → [(Success, 2), …]."""
    runs: list[tuple[str, int]] = []
    for response in responses:
        if runs and runs[-1][0] == response:
            runs[-1] = (response, runs[-1][1] + 1)
        else:
            runs.append((response, 1))
    return runs


@dataclass(frozen=True)
class NodeCase:
    name: str
    action: Callable[[Stage], str]
    expected: Expected


ABORTED_CLOSED = closing([ABORT])


def fails_alone(answer: str) -> Expected:
    """The bad instance refused, the good one after it accepted, the association released."""
    return Expected(answer, associations=("released",), accepted=1)


def set_aside(answer: str, *others: str) -> Expected:
    """The association aborted, its one good instance set aside (``others``: more associations)."""
    return Expected(answer, associations=("aborted", *others), aside=1)


CASES = [
    NodeCase(
        "unknown-sop-class-proposed",
        unknown_sop_class_proposed,
        Expected("context result 3", associations=("released",)),
    ),
    NodeCase("private-class-on-a-ct-context", private_class_on_a_ct_context, set_aside(ABORTED_CLOSED)),
    NodeCase(
        "dataset-sop-class-not-the-commands",
        dataset_sop_class_not_the_commands,
        fails_alone(status(0xA900)),
    ),
    NodeCase(
        "dataset-instance-uid-not-the-commands",
        dataset_instance_uid_not_the_commands,
        fails_alone(status(0xC212)),
    ),
    NodeCase("zero-length-dataset", zero_length_dataset, fails_alone(status(0xC210))),
    NodeCase("lying-length-in-the-header", lying_length_in_the_header, fails_alone(status(0xC210))),
    NodeCase("lying-length-of-the-pixel-data", lying_length_of_the_pixel_data, fails_alone(status(0xC210))),
    NodeCase("lying-vr-in-the-header", lying_vr_in_the_header, fails_alone(status(0xC210))),
    NodeCase(
        "dataset-truncated-last-fragment",
        dataset_truncated_last_fragment,
        fails_alone(status(0xC210)),
    ),
    NodeCase("dataset-truncated-then-abort", dataset_truncated_then_abort, set_aside("closed")),
    NodeCase(
        "association-never-released",
        association_never_released,
        # The second association is the echo served while the first one sat silent.
        set_aside(f"{status(0)}, then {ABORTED_CLOSED}", "released"),
    ),
    NodeCase("silent-inside-a-pdu", silent_inside_a_pdu, set_aside("closed")),
    NodeCase("tcp-connection-sends-nothing", tcp_connection_sends_nothing, Expected("closed")),
    NodeCase("http-request-on-the-port", http_request_on_the_port, Expected(ABORTED_CLOSED)),
    NodeCase("p-data-before-association", p_data_before_association, Expected(ABORTED_CLOSED)),
    NodeCase(
        "pdu-declaring-4-gib-before-association",
        pdu_declaring_4_gib_before_association,
        Expected("closed before the body was read"),
    ),
    NodeCase(
        "pdu-declaring-4-gib-inside-association",
        pdu_declaring_4_gib_inside_association,
        set_aside("closed before the body was read"),
    ),
    NodeCase("unknown-calling-ae", unknown_calling_ae, Expected(rejected(1, 1, 3))),
    NodeCase("known-ae-from-another-host", known_ae_from_another_host, Expected(rejected(1, 1, 3))),
    NodeCase("wrong-called-ae", wrong_called_ae, Expected(rejected(1, 1, 7))),
    NodeCase(
        "more-associations-than-allowed",
        more_associations_than_allowed,
        Expected(rejected(2, 3, 2), associations=("released",) * MAX_ASSOCIATIONS, accepted=MAX_ASSOCIATIONS),
    ),
    NodeCase(
        "second-patient-mixed-into-a-study",
        second_patient_mixed_into_a_study,
        Expected("5 × Success", associations=("released",), accepted=5),
    ),
    NodeCase(
        "study-of-3000-instances",
        study_of_3000_instances,
        Expected("3000 × Success", associations=("released",), accepted=3000),
    ),
    NodeCase(
        "over-the-pending-instance-cap",
        over_the_pending_instance_cap,
        Expected("5 × Success, 3 × Refused: OutOfResources", associations=("released",), accepted=5),
    ),
    NodeCase(
        "re-sent-instance",
        re_sent_instance,
        Expected("3 × Success", associations=("released", "released"), accepted=1),
    ),
]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_node_bad_input(stage: Stage, case: NodeCase) -> None:
    before = Before.of(stage)
    answer = case.action(stage)
    assert answer == case.expected.answer
    _assert_unharmed(stage, before, case.expected)
