"""DICOM TLS on the node, with dcmtk's storescu (``+tls``) as the independent peer.

A TLS peer stores; a plain peer, a peer that connects and says nothing, and (with mutual TLS) a
peer whose certificate nobody trusts are refused, and the node goes on serving the others.
Wrong TLS settings stop the node before it listens, with the setting's name.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select

from service.config import Settings
from service.db.engine import Database
from service.db.models import NodeInstance
from service.node.routing import RoutingRules
from service.node.server import NodeServer, build_ssl_context
from tests.patients import write_patient
from tests.pki import Identity, Pki, write_pki
from worker.jobs.spec import Destination
from worker.tls import TlsConfigError

pytestmark = [pytest.mark.tools, pytest.mark.timeout(120)]

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return write_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few small instances of one patient (3 CT slices are enough to see them filed)."""
    patient = write_patient(tmp_path_factory.mktemp("tls-patient"), with_plan=False)
    return patient.root / "followup0"


def _tls_node(start_node: Callable[..., NodeServer], pki: Pki, *, mutual: bool = False) -> NodeServer:
    return start_node(
        node_tls_cert=pki.server.cert,
        node_tls_key=pki.server.key,
        node_tls_ca=pki.ca.cert,
        node_tls_require_client_cert=mutual,
    )


def _tls_options(pki: Pki, client: Identity | None) -> tuple[str, ...]:
    """storescu's TLS options: our client certificate (or none: ``+tla``), trusting our CA."""
    identity = ("+tls", str(client.key), str(client.cert)) if client is not None else ("+tla",)
    return (*identity, "+cf", str(pki.ca.cert))


def _stored(database: Database) -> int:
    with database.session() as session:
        return int(session.scalar(select(func.count()).select_from(NodeInstance)) or 0)


def test_a_tls_peer_stores_into_the_tls_node(
    start_node, storescu: Run, node_database, pki, instances
) -> None:
    node = _tls_node(start_node, pki)
    result = storescu(node, instances, options=_tls_options(pki, pki.client))
    assert result.returncode == 0, result.stdout + result.stderr
    assert _stored(node_database) == len(list(instances.glob("*.dcm")))


def test_plain_and_silent_peers_are_refused_and_the_others_served(
    start_node, storescu: Run, node_database, pki, instances, caplog: pytest.LogCaptureFixture
) -> None:
    node = _tls_node(start_node, pki)
    caplog.set_level(logging.WARNING, logger="service.node.server")
    plain = storescu(node, instances)
    assert plain.returncode != 0
    assert _stored(node_database) == 0
    assert "TLS handshake with 127.0.0.1 failed" in caplog.text
    # A peer that connects and never starts the handshake must not hold up the next caller
    # (pynetdicom would handshake in its accept loop; the node does it per connection).
    with socket.create_connection(node.address, timeout=10):
        served = storescu(node, instances, options=_tls_options(pki, pki.client))
    assert served.returncode == 0, served.stdout + served.stderr
    assert _stored(node_database) == len(list(instances.glob("*.dcm")))


def test_mutual_tls_refuses_untrusted_and_missing_client_certificates(
    start_node, storescu: Run, node_database, pki, instances
) -> None:
    node = _tls_node(start_node, pki, mutual=True)
    untrusted = storescu(node, instances, options=_tls_options(pki, pki.rogue_client))
    anonymous = storescu(node, instances, options=_tls_options(pki, None))
    assert untrusted.returncode != 0 and anonymous.returncode != 0
    assert _stored(node_database) == 0
    trusted = storescu(node, instances, options=_tls_options(pki, pki.client))
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    assert _stored(node_database) > 0


def test_without_a_certificate_the_node_speaks_plain_dicom(start_node, storescu: Run, instances) -> None:
    node = start_node()
    assert build_ssl_context(node.settings) is None
    assert storescu(node, instances).returncode == 0


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"cert": "server.crt"}, "RTINJURY_NODE_TLS_KEY is required with RTINJURY_NODE_TLS_CERT"),
        ({"key": "server.key"}, "TLS is off unless RTINJURY_NODE_TLS_CERT is set"),
        ({"cert": "server.crt", "key": "missing.key"}, "RTINJURY_NODE_TLS_KEY: cannot read"),
        ({"cert": "server.key", "key": "server.key"}, "RTINJURY_NODE_TLS_CERT: "),
        ({"cert": "server.crt", "key": "client.key"}, "RTINJURY_NODE_TLS_KEY does not match the certificate"),
        ({"cert": "server.crt", "key": "server.crt"}, "RTINJURY_NODE_TLS_KEY: "),
        ({"cert": "server.crt", "key": "server.key", "ca": "server.key"}, "RTINJURY_NODE_TLS_CA: "),
        ({"cert": "server.crt", "key": "server.key", "mutual": True}, "needs RTINJURY_NODE_TLS_CA"),
    ],
    ids=["no-key", "key-alone", "missing-key", "cert-not-a-cert", "key-of-another", "key-not-a-key",
         "ca-not-a-cert", "mutual-without-ca"],
)  # fmt: skip
def test_wrong_tls_settings_name_the_setting(
    node_settings: Settings, node_database: Database, pki: Pki, files: dict[str, object], message: str
) -> None:
    folder = pki.ca.cert.parent
    settings = node_settings.model_copy(
        update={
            f"node_tls_{name}": folder / str(value)
            for name, value in files.items()
            if name in ("cert", "key", "ca")
        }
        | {"node_tls_require_client_cert": bool(files.get("mutual"))}
    )
    with pytest.raises(TlsConfigError, match=re.escape(message)):
        build_ssl_context(settings)
    node = NodeServer(settings, node_database)
    with pytest.raises(TlsConfigError):
        node.start()  # refused before it listens: nothing to stop
    with pytest.raises(RuntimeError, match="not started"):
        _ = node.address


def test_an_encrypted_key_is_refused_instead_of_prompting_for_its_password(
    node_settings: Settings, pki: Pki, tmp_path: Path
) -> None:
    encrypted = tmp_path / "encrypted.key"
    command = ["openssl", "pkey", "-in", str(pki.server.key), "-aes128", "-passout", "pass:secret"]
    subprocess.run([*command, "-out", str(encrypted)], check=True, capture_output=True, timeout=60)
    settings = node_settings.model_copy(update={"node_tls_cert": pki.server.cert, "node_tls_key": encrypted})
    with pytest.raises(TlsConfigError, match=r"RTINJURY_NODE_TLS_KEY: .* is an encrypted private key"):
        build_ssl_context(settings)


@pytest.mark.slow
def test_rtinjury_node_with_a_key_of_another_certificate_exits_with_the_setting_named(
    tmp_path: Path, pki: Pki
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTINJURY_")}
    env |= {
        "RTINJURY_STORAGE_ROOT": str(tmp_path),
        "RTINJURY_NODE_TLS_CERT": str(pki.server.cert),
        "RTINJURY_NODE_TLS_KEY": str(pki.client.key),
    }
    result = subprocess.run(
        [sys.executable, "-m", "service.cli.main", "node"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "rtinjury: error: RTINJURY_NODE_TLS_KEY does not match the certificate in RTINJURY_NODE_TLS_CERT"
    )
    assert "Traceback" not in result.stderr


def test_a_route_destination_carries_its_tls_files(pki: Pki) -> None:
    rules = RoutingRules.model_validate(
        {
            "destinations": {
                "pacs": {
                    "ae_title": "PACS",
                    "host": "127.0.0.1",
                    "port": 2762,
                    "tls": {
                        "ca_file": str(pki.ca.cert),
                        "cert_file": str(pki.client.cert),
                        "key_file": str(pki.client.key),
                    },
                }
            },
            "routes": [{"name": "all", "destinations": ["pacs"]}],
        }
    )
    # As RoutingRules.spec_for makes a job's destinations of them:
    destination = Destination(name="pacs", **rules.destinations["pacs"].model_dump())
    assert destination.tls is not None
    assert (destination.tls.ca_file, destination.tls.key_file) == (pki.ca.cert, pki.client.key)
    with pytest.raises(ValueError, match="cert_file and key_file go together"):
        RoutingRules.model_validate(
            {"destinations": {"pacs": {"ae_title": "PACS", "host": "h", "port": 1,
                                       "tls": {"ca_file": "ca.crt", "cert_file": "c.crt"}}}}
        )  # fmt: skip
