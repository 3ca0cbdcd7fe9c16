"""Throwaway TLS certificates for the DICOM TLS tests, made with the openssl command line.

Two certification authorities: ``ca`` (the one our settings trust) and ``rogue`` (one nobody
trusts). Each signs a server and a client certificate for ``localhost`` / ``127.0.0.1``. EC
P-256 keys: generating them takes milliseconds, and dcmtk's BCP 195 profile accepts them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_SUBJECT_ALT_NAMES = "subjectAltName=DNS:localhost,IP:127.0.0.1"
_LEAF_EXTENSIONS = (
    f"{_SUBJECT_ALT_NAMES}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n"
)


@dataclass(frozen=True)
class Identity:
    """A certificate and its private key (PEM files)."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Identity
    server: Identity
    client: Identity
    rogue_ca: Identity
    rogue_server: Identity
    rogue_client: Identity


def write_pki(folder: Path) -> Pki:
    """Write both authorities and their four leaf certificates under ``folder``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the openssl command line is not installed", pytrace=False)
    folder.mkdir(parents=True, exist_ok=True)
    ca, rogue_ca = _authority(openssl, folder, "ca"), _authority(openssl, folder, "rogue-ca")
    return Pki(
        ca=ca,
        server=_leaf(openssl, folder, "server", ca),
        client=_leaf(openssl, folder, "client", ca),
        rogue_ca=rogue_ca,
        rogue_server=_leaf(openssl, folder, "rogue-server", rogue_ca),
        rogue_client=_leaf(openssl, folder, "rogue-client", rogue_ca),
    )


def _authority(openssl: str, folder: Path, name: str) -> Identity:
    identity = Identity(folder / f"{name}.crt", folder / f"{name}.key")
    _run(
        openssl, "req", "-x509", *_new_key(identity.key), "-out", str(identity.cert), "-days", "2",
        "-subj", f"/CN=rtinjury test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return identity


def _leaf(openssl: str, folder: Path, name: str, issuer: Identity) -> Identity:
    identity = Identity(folder / f"{name}.crt", folder / f"{name}.key")
    request, extensions = folder / f"{name}.csr", folder / f"{name}.ext"
    extensions.write_text(_LEAF_EXTENSIONS)
    _run(openssl, "req", *_new_key(identity.key), "-out", str(request), "-subj", f"/CN={name}")
    _run(
        openssl, "x509", "-req", "-in", str(request), "-CA", str(issuer.cert), "-CAkey", str(issuer.key),
        "-CAcreateserial", "-out", str(identity.cert), "-days", "2", "-extfile", str(extensions),
    )  # fmt: skip
    return identity


def _new_key(path: Path) -> list[str]:
    return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(path)]


def _run(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, f"{' '.join(command[:3])}: {result.stderr}"
