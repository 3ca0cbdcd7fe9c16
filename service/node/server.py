"""The node's DICOM side: a pynetdicom C-ECHO/C-STORE SCP in front of the ``Inbox``.

Who may call: a peer of ``node_peers``, by AE title *and* the address it connects from, calling
us by our AE title; anyone else gets an A-ASSOCIATE-RJ (calling AE title not recognised).

What pynetdicom is told, and why:

- ``STORE_RECV_CHUNKED_DATASET``: a received dataset goes to a file, never into memory, and the
  handler never decodes it (``event.dataset`` is not touched). pynetdicom has no setting for
  where that temporary file goes, so this module points it at ``<storage root>/node/incoming``:
  a default ``/tmp`` is often a tmpfs (memory) in containers, and on the store's own file
  system filing an instance is a rename.
- Its standard event logging is off (it logs DIMSE messages with UIDs and, at debug level,
  whole PDUs): nothing patient-related reaches a log from here.
- TLS (optional, ``node_tls_*``): an ``ssl_context``, whose handshakes happen in each
  connection's own thread (``handle_tls_handshake``), not in pynetdicom's accept loop where a
  peer that connects and says nothing would hold up every other caller.
- Timeouts: an association silent for ``node_network_timeout_s`` is aborted by pynetdicom and
  recorded as aborted (its instances set aside). pynetdicom leaves the accepted sockets
  blocking: a peer that stops inside a PDU (or sends a few bytes of anything) would hold its
  thread and an association slot forever, so each connection gets the same timeout.
- A PDU longer than the node's maximum PDU (at least 1 MiB, for association requests) closes
  the connection before its body is read: pynetdicom would buffer whatever length a peer
  declares, 4 GiB included, in memory.
- Temporary files of an association that ends without handing them to the inbox (a dataset
  cut short, a C-STORE pynetdicom refused) are deleted when it ends.

Handlers are ``handle_<event>`` functions that never raise: expected failures are DIMSE
statuses (``StoreStatus``); anything unexpected is logged by type and place, with the
association id, and answered with ``StoreStatus.NODE_FAILURE``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import tempfile
import threading
import traceback
import weakref
from pathlib import Path
from typing import Any
from uuid import uuid4

from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from service.config import NodePeer, Settings
from service.db.engine import Database
from service.node.contexts import add_supported_contexts
from service.node.inbox import Inbox, StoreStatus
from service.node.incoming import SpaceAwareFile, space_aware_temporary_file
from worker.tls import NamedFile, TlsConfigError, handshake_failure, server_context

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ: rejected permanent, by the service user, calling AE title not recognised.
_REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: How often ended associations are looked for (those that ended without release or abort event).
_REAPER_INTERVAL_S = 0.2
#: How long pynetdicom's DUL thread sleeps when it finds nothing to do (its default is 1 ms).
#: Each instance waits for it at least twice (data in, response out): at 1 ms that is most of
#: an instance's time on loopback; at 0.2 ms an idle open association costs ~3% of a core.
_DUL_IDLE_SLEEP_S = 0.0002
#: The longest PDU body read when ``node_max_pdu`` is smaller: an A-ASSOCIATE-RQ is not bound
#: by the maximum PDU and one proposing every context of a big PACS is tens of KiB.
_MIN_PDU_LIMIT = 1024**2


class NodeServer:
    """The DICOM node of one process: ``start()``, ``address``, ``stop()``.

    Parameters
    ----------
    settings : Settings
        ``node_*`` fields (AE title, address, peers, limits, timeouts) and ``storage_root``.
    database : Database
        Where associations, instances and studies are recorded.
    """

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.inbox = Inbox(settings, database)
        self._server: ThreadedAssociationServer | None = None
        self._allowed: frozenset[tuple[str, str]] = frozenset()
        self._open: dict[Association, str] = {}
        self._open_lock = threading.Lock()
        self._stopping = threading.Event()
        self._reaper: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start listening (non-blocking: pynetdicom serves in its own threads)."""
        if self._server is not None:
            raise RuntimeError("the node is already started")
        ssl_context = build_ssl_context(self.settings)  # bad TLS files: refused before anything runs
        _quiet_pynetdicom()
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.inbox.recover()
        self._allowed = _resolve_peers(self.settings.node_peers)
        ae = build_ae(self.settings)
        _route_temporary_files(ae, self.inbox.incoming_dir)
        self._stopping.clear()
        self._server = ae.start_server(
            (self.settings.node_host, self.settings.node_port),
            block=False,
            evt_handlers=self._handlers(),
            ssl_context=ssl_context,
        )
        self._reaper = threading.Thread(target=self._reap_ended, name="node-reaper", daemon=True)
        self._reaper.start()
        host, port = self.address
        tls = "TLS" if ssl_context is not None else "no TLS"
        log.info("DICOM node %s listening on %s:%d (%s)", self.settings.node_ae_title, host, port, tls)

    def stop(self) -> None:
        """Stop listening; open associations are aborted (their instances set aside)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()  # stops accepting; the open associations are ours to end
        for assoc in server.active_associations:
            assoc.abort()
        self._stopping.set()
        if self._reaper is not None:
            self._reaper.join()
        self._close_ended(wait=True)
        log.info("DICOM node stopped")

    @property
    def address(self) -> tuple[str, int]:
        """The host and port the node listens on (the bound port when ``node_port`` is 0)."""
        if self._server is None:
            raise RuntimeError("the node is not started")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def __enter__(self) -> NodeServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- handlers ---------------------------------------------------------------------------

    def _handlers(self) -> list[EventHandlerType]:
        return [
            (evt.EVT_CONN_OPEN, handle_connection_open),
            (evt.EVT_CONN_OPEN, handle_tls_handshake, [self.settings.node_network_timeout_s]),
            (evt.EVT_REQUESTED, self.handle_requested),
            (evt.EVT_ACCEPTED, self.handle_accepted),
            (evt.EVT_C_ECHO, handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_RELEASED, self.handle_released),
            (evt.EVT_ABORTED, self.handle_aborted),
        ]

    def handle_requested(self, event: Event) -> None:
        """Refuse a caller that is not an allowed (AE title, address) pair."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling_ae = str(request.calling_ae_title).strip() if request is not None else ""
        host = assoc.requestor.address
        if (calling_ae, _normal_ip(host)) in self._allowed:
            return
        log.warning("refused association from AE %r at %s: not an allowed peer", calling_ae, host)
        try:
            assoc.acse.send_reject(*_REJECT_CALLING_AE)
            # As pynetdicom does after its own rejections: wait until the peer has the A-ASSOCIATE-RJ
            # and the connection is closed (or the ARTIM timer gives up), then end the association.
            assoc.kill()
        except Exception as error:
            _log_unexpected("rejecting an association", None, error)

    def handle_accepted(self, event: Event) -> None:
        assoc_id = uuid4().hex
        with self._open_lock:
            self._open[event.assoc] = assoc_id
        try:
            requestor = event.assoc.requestor
            self.inbox.open_association(assoc_id, str(requestor.ae_title), requestor.address)
        except Exception as error:
            _log_unexpected("recording an association", assoc_id, error)

    def handle_store(self, event: Event) -> int:
        """File one instance from pynetdicom's temporary file; returns the C-STORE status."""
        assoc_id = self._id_of(event.assoc)
        if assoc_id is None:
            log.error("C-STORE on an association the node does not know; refused")
            return StoreStatus.NODE_FAILURE
        try:
            return self.inbox.store(assoc_id, event.file_meta, event.dataset_path)
        except Exception as error:
            _log_unexpected("storing an instance", assoc_id, error)
            return StoreStatus.NODE_FAILURE

    def handle_released(self, event: Event) -> None:
        self._close(event.assoc, released=True)

    def handle_aborted(self, event: Event) -> None:
        self._close(event.assoc, released=False)

    # -- association ends -------------------------------------------------------------------

    def _id_of(self, assoc: Association) -> str | None:
        with self._open_lock:
            return self._open.get(assoc)

    def _close(self, assoc: Association, released: bool) -> None:
        """Record the end of ``assoc`` once, whichever of the event or the reaper sees it first."""
        with self._open_lock:
            assoc_id = self._open.pop(assoc, None)
        if assoc_id is None:
            return
        _discard_temporary_files(assoc)
        try:
            self.inbox.close_association(assoc_id, released=released)
        except Exception as error:
            _log_unexpected("closing an association", assoc_id, error)

    def _reap_ended(self) -> None:
        """Associations can end without EVT_RELEASED or EVT_ABORTED (the peer drops the connection,
        the DUL dies): once their thread is gone they count as released only if they were."""
        while not self._stopping.wait(_REAPER_INTERVAL_S):
            self._close_ended(wait=False)

    def _close_ended(self, wait: bool) -> None:
        with self._open_lock:
            candidates = list(self._open)
        for assoc in candidates:
            if wait:
                assoc.join(timeout=self.settings.node_network_timeout_s)
            if not assoc.is_alive():
                self._close(assoc, released=bool(assoc.is_released))


def handle_connection_open(event: Event) -> None:
    """Bound the new connection (a read timeout, a PDU size limit) and tune it for many small
    request/response exchanges."""
    try:
        connection = event.assoc.dul.socket
        if connection is not None and connection.socket is not None:
            # accept() gives a blocking socket whatever the listening one had: without this a
            # read inside a PDU waits for ever.
            connection.socket.settimeout(event.assoc.network_timeout)
            # One C-STORE response per instance: never hold it back for Nagle's algorithm.
            connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _limit_pdu_reads(connection, event.assoc.ae.maximum_pdu_size)
        # A private attribute of pynetdicom's DUL (3.0): no setting exists for it.
        if hasattr(event.assoc.dul, "_run_loop_delay"):
            event.assoc.dul._run_loop_delay = _DUL_IDLE_SLEEP_S
    except Exception as error:
        _log_unexpected("tuning a connection", None, error)


def _limit_pdu_reads(connection: Any, maximum_pdu: int) -> None:
    """Make reads longer than the PDU limit fail as a closed connection would.

    pynetdicom's DUL reads a PDU as ``recv(6)`` then ``recv(length)``: a failing ``recv`` ends
    the connection (A-P-ABORT) before a byte of the body is buffered. ``maximum_pdu`` 0 means
    unlimited, as in pynetdicom.
    """
    if not maximum_pdu:
        return
    limit = max(maximum_pdu, _MIN_PDU_LIMIT)
    receive = connection.recv

    def bounded_recv(count: int) -> Any:
        if count > limit:
            log.warning("connection closed: a peer announced a %d-byte PDU (limit %d)", count, limit)
            raise ConnectionAbortedError("PDU over the node's limit")
        return receive(count)

    connection.recv = bounded_recv


def handle_tls_handshake(event: Event, timeout_s: float) -> None:
    """Complete the TLS handshake of a new connection, in its own thread (see ``build_ssl_context``).

    A peer that fails it (it does not speak TLS, its certificate is not trusted, it says nothing
    for ``timeout_s``) is logged and disconnected; other callers never wait for it.
    """
    connection = event.assoc.dul.socket
    tls_socket = connection.socket if connection is not None else None
    if connection is None or not isinstance(tls_socket, ssl.SSLSocket):
        return
    timeout = tls_socket.gettimeout()
    try:
        tls_socket.settimeout(timeout_s)
        tls_socket.do_handshake()
        tls_socket.settimeout(timeout)
    except (OSError, ValueError) as error:  # ssl.SSLError, a timeout, a reset connection
        peer = event.assoc.requestor.address
        log.warning("TLS handshake with %s failed: %s; connection closed", peer, handshake_failure(error))
        connection.close()
        # No A-ASSOCIATE-RQ can come now: end the association at once instead of waiting for one
        # (it counts against node_max_associations while it waits).
        event.assoc.acse_timeout = 0


def handle_echo(_event: Event) -> int:
    """C-ECHO: the node is up."""
    return 0x0000


def build_ae(settings: Settings) -> AE:
    """The node's application entity: AE title, contexts, limits and timeouts from settings."""
    ae = AE(ae_title=settings.node_ae_title)
    add_supported_contexts(ae)
    ae.require_called_aet = True
    # pynetdicom's own calling-AE check (an empty list would let everyone in; the host check in
    # NodeServer.handle_requested refuses everyone then).
    ae.require_calling_aet = sorted({peer.ae_title for peer in settings.node_peers})
    ae.maximum_associations = settings.node_max_associations
    ae.maximum_pdu_size = settings.node_max_pdu
    ae.network_timeout = settings.node_network_timeout_s
    ae.acse_timeout = settings.node_network_timeout_s
    ae.dimse_timeout = settings.node_network_timeout_s
    return ae


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The node's TLS context (TLS 1.2 or later), or None when ``node_tls_cert`` is not set.

    Raises
    ------
    worker.tls.TlsConfigError
        A TLS setting is incomplete, or names a file that is missing or does not hold what it
        should (the message names the setting).
    """
    cert, key, ca = settings.node_tls_cert, settings.node_tls_key, settings.node_tls_ca
    if cert is None:
        if key is not None or ca is not None or settings.node_tls_require_client_cert:
            raise TlsConfigError(
                "TLS is off unless RTINJURY_NODE_TLS_CERT is set; set it or unset the other NODE_TLS settings"
            )
        return None
    if key is None:
        raise TlsConfigError("RTINJURY_NODE_TLS_KEY is required with RTINJURY_NODE_TLS_CERT")
    if settings.node_tls_require_client_cert and ca is None:
        raise TlsConfigError(
            "RTINJURY_NODE_TLS_REQUIRE_CLIENT_CERT needs RTINJURY_NODE_TLS_CA (the peers' CA)"
        )
    return server_context(
        NamedFile("RTINJURY_NODE_TLS_CERT", cert),
        NamedFile("RTINJURY_NODE_TLS_KEY", key),
        NamedFile("RTINJURY_NODE_TLS_CA", ca) if ca is not None else None,
        require_client_cert=settings.node_tls_require_client_cert,
    )


def _resolve_peers(peers: list[NodePeer]) -> frozenset[tuple[str, str]]:
    """(AE title, IP address) pairs allowed to call; host names are resolved once, here."""
    allowed: set[tuple[str, str]] = set()
    for peer in peers:
        try:
            infos = socket.getaddrinfo(peer.host, None, proto=socket.IPPROTO_TCP)
        except OSError:
            log.warning("peer %r: host %r does not resolve; refused until restart", peer.ae_title, peer.host)
            continue
        allowed.update((peer.ae_title.strip(), _normal_ip(str(info[4][0]))) for info in infos)
    return frozenset(allowed)


def _normal_ip(address: str) -> str:
    """One spelling per address: an IPv4-mapped IPv6 address (dual-stack sockets) as IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _log_unexpected(doing: str, assoc_id: str | None, error: BaseException) -> None:
    """Log an unexpected error by type and place only: messages may quote patient data."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    kind = type(error).__name__
    log.error("association %s: unexpected %s while %s (at %s)", assoc_id or "-", kind, doing, where)


def _quiet_pynetdicom() -> None:
    """No DIMSE message, identifier or PDU content in the logs (they carry UIDs and names).

    pynetdicom's standard handlers are what log those; its remaining messages (association
    events, warnings) carry AE titles and addresses only. Levels stay the entry point's choice.
    """
    _config.LOG_HANDLER_LEVEL = "none"
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False


# -- where pynetdicom writes received datasets ---------------------------------------------

#: The incoming folder of each running node's AE (weak: a stopped node's AE can go).
_INCOMING_DIRS: weakref.WeakKeyDictionary[AE, Path] = weakref.WeakKeyDictionary()
#: Per association, the temporary files pynetdicom has not closed yet (at most the one being
#: received, or one it dropped).
_OPEN_TEMPORARY_FILES: weakref.WeakKeyDictionary[Association, list[SpaceAwareFile]] = (
    weakref.WeakKeyDictionary()
)
_ROUTING_LOCK = threading.Lock()


def _route_temporary_files(ae: AE, incoming_dir: Path) -> None:
    """Make pynetdicom create ``ae``'s received-dataset files in ``incoming_dir``.

    pynetdicom calls ``tempfile.NamedTemporaryFile`` (module ``dimse_messages``) from the
    association's DUL thread while the dataset arrives; the replacement finds that thread's AE
    and passes its folder as ``dir``. Other AEs in the process keep the default.
    """
    with _ROUTING_LOCK:
        _INCOMING_DIRS[ae] = incoming_dir
        if getattr(dimse_messages, "NamedTemporaryFile", None) is not _named_temporary_file:
            dimse_messages.NamedTemporaryFile = _named_temporary_file


def _named_temporary_file(*args: Any, **kwargs: Any) -> Any:
    thread = threading.current_thread()
    if not isinstance(thread, DULServiceProvider) or "dir" in kwargs:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    incoming = _INCOMING_DIRS.get(thread.assoc.ae)
    if incoming is None:
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    kwargs["dir"] = incoming
    file = space_aware_temporary_file(*args, **kwargs)  # a full disk: 0xA700, no abort
    with _ROUTING_LOCK:
        # pynetdicom closes a file once its handler has run: only the others are kept.
        still_open = [f for f in _OPEN_TEMPORARY_FILES.get(thread.assoc, []) if not f.closed]
        _OPEN_TEMPORARY_FILES[thread.assoc] = [*still_open, file]
    return file


def _discard_temporary_files(assoc: Association) -> None:
    """Delete ``assoc``'s temporary files that never reached the inbox: the dataset being received
    when it was aborted, or one pynetdicom refused (it aborts without deleting it; pynetdicom
    creates them with ``delete=False``)."""
    with _ROUTING_LOCK:
        files = _OPEN_TEMPORARY_FILES.pop(assoc, [])
    for file in files:
        if file.closed:
            continue
        file.close()
        Path(file.name).unlink(missing_ok=True)
