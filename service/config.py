"""Settings of the API process (environment variables with the ``RTINJURY_`` prefix).

The API shares the workers' settings (storage root, broker, model) and adds its own: the job
database, the API keys and the upload limits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from service.keys import KeyLine, parse_key_line
from worker.settings import WorkerSettings
from worker.stages.assemble.sources import ZipLimits

#: Shorter keys are guessable; ``rtinjury keys new`` makes 43-character ones.
MIN_API_KEY_LENGTH = 16
_ZIP_DEFAULTS = ZipLimits()


class NodePeer(BaseModel):
    """A DICOM peer allowed to open associations with the node: its AE title and host."""

    ae_title: str = Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]+$")
    #: IP address (or host name, resolved when the node starts) the peer connects from.
    host: str = Field(min_length=1, max_length=253)


class Settings(WorkerSettings):
    """Typed settings; each field can be set as ``RTINJURY_<FIELD>`` in the environment."""

    #: SQLAlchemy URL of the job database, e.g. ``postgresql+psycopg://user:pw@host/rtinjury``;
    #: unset means a SQLite file under the storage root.
    database_url: str | None = None
    #: Accepted API keys as ``sha256:<hex>`` lines, each optionally ``;scopes=submit,read``
    #: (``rtinjury keys new``); a JSON list in the env. A line without scopes has all three.
    api_key_hashes: list[str] = Field(default_factory=list)
    #: One plaintext key with every scope, for development and tests only.
    api_key: SecretStr | None = None
    #: Signs the web viewer's session cookies; unset means a random secret kept in
    #: ``<storage_root>/session-secret`` (shared by every API process on that storage).
    session_secret: SecretStr | None = None
    #: Mark the session cookie ``Secure`` (sent over HTTPS only). Unset: when the request came
    #: over HTTPS; set it true behind a proxy that terminates TLS (the API then sees HTTP).
    session_cookie_secure: bool | None = None
    #: How long a web login lasts before the key must be entered again.
    session_lifetime_s: int = Field(default=8 * 3600, ge=60, le=30 * 24 * 3600)
    #: Folders of ``rtinjury audit --out`` results the web viewer lists (one audit per
    #: subfolder); unset means ``<storage_root>/audits``.
    audit_root: Path | None = None
    #: Memory the API may keep for the viewer's volumes (follow-up, dose, lesion) of recent jobs.
    viewer_cache_mb: int = Field(default=1024, ge=64)
    #: Largest request body of an upload (all parts together).
    max_upload_bytes: int = Field(default=4 * 1024**3, ge=1024)
    #: Most files in one upload: parts plus the entries of its zip archives.
    max_upload_files: int = Field(default=20_000, ge=1)
    #: Most bytes the zip archives of one upload may inflate to.
    zip_max_unpacked_bytes: int = Field(default=_ZIP_DEFAULTS.max_total_bytes, ge=1024)
    #: Highest compression ratio accepted before an archive counts as a zip bomb.
    zip_max_ratio: float = Field(default=_ZIP_DEFAULTS.max_ratio, gt=1)

    #: The DICOM node (``rtinjury node``; its AE title is a worker setting): where it listens, who
    #: may call it.
    node_host: str = "127.0.0.1"
    #: 0 lets the system pick a free port (tests).
    node_port: int = Field(default=11112, ge=0, le=65535)
    #: Callers allowed to store (JSON list of {"ae_title", "host"}); empty refuses everyone.
    node_peers: list[NodePeer] = Field(default_factory=list)
    #: A patient's study counts as complete this long after the last released association.
    node_quiet_period_s: float = Field(default=30.0, ge=0)
    node_max_associations: int = Field(default=10, ge=1, le=1000)
    #: Largest PDU the node accepts (bytes); 0 means unlimited.
    node_max_pdu: int = Field(default=262_144, ge=0)
    #: Seconds without traffic before the node drops an association (one that never releases).
    node_network_timeout_s: float = Field(default=60.0, gt=0)
    #: Refuse instances (DIMSE "out of resources") when less than this is free on the storage root.
    node_min_free_bytes: int = Field(default=1024**3, ge=0)
    #: Refuse instances beyond this many per patient since its study was last completed.
    node_max_pending_instances: int = Field(default=20_000, ge=1)
    #: Routing rules and result destinations (YAML); unset means the packaged defaults.
    node_routes: Path | None = None
    #: DICOM TLS, off unless set: the node's certificate (PEM; intermediates after it) and key.
    node_tls_cert: Path | None = None
    #: The private key of ``node_tls_cert`` (PEM, unencrypted; readable by the service only).
    node_tls_key: Path | None = None
    #: CA certificates (PEM) that sign the peers' client certificates; a certificate a peer
    #: presents must chain to one of them.
    node_tls_ca: Path | None = None
    #: Mutual TLS: a peer without a certificate signed by ``node_tls_ca`` is refused.
    node_tls_require_client_cert: bool = False

    @field_validator("api_key_hashes")
    @classmethod
    def _hashes_are_key_lines(cls, hashes: list[str]) -> list[str]:
        cleaned, problems = [], []
        for number, line in enumerate(hashes):
            try:
                cleaned.append(str(parse_key_line(line)))
            except ValueError as error:
                # Say which entry and why, never its value: a pasted plaintext key must not be logged.
                problems.append(f"entry {number}: {error}")
        if problems:
            raise ValueError(f"{'; '.join(problems)} (see `rtinjury keys new`)")
        return cleaned

    @field_validator("api_key")
    @classmethod
    def _key_is_long_enough(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_API_KEY_LENGTH:
            raise ValueError(f"RTINJURY_API_KEY must have at least {MIN_API_KEY_LENGTH} characters")
        return key

    @property
    def api_keys(self) -> list[KeyLine]:
        """The configured key lines, parsed (hash and scopes)."""
        return [parse_key_line(line) for line in self.api_key_hashes]

    @property
    def sqlalchemy_url(self) -> str:
        """The job database: the configured URL or ``<storage_root>/rtinjury.db``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.storage_root.resolve() / 'rtinjury.db'}"

    @property
    def audits_folder(self) -> Path:
        """Where the web viewer looks for audits: ``audit_root`` or ``<storage_root>/audits``."""
        return self.audit_root if self.audit_root is not None else Path(self.storage_root) / "audits"

    @property
    def zip_limits(self) -> ZipLimits:
        return ZipLimits(
            max_entries=self.max_upload_files,
            max_total_bytes=self.zip_max_unpacked_bytes,
            max_ratio=self.zip_max_ratio,
        )


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
