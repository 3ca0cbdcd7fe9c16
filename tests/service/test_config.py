import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings
from service.keys import Scope
from worker.stages.assemble.sources import ZipLimits


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTINJURY_ROLE_RULES", str(tmp_path / "site.yaml"))
    monkeypatch.setenv("RTINJURY_STORAGE_ROOT", str(tmp_path))
    settings = Settings()
    assert settings.role_rules == tmp_path / "site.yaml"
    assert settings.storage_root == tmp_path


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTINJURY_ROLE_RULES", raising=False)
    assert Settings().role_rules is None


def test_api_key_hashes_come_as_a_json_list(monkeypatch: pytest.MonkeyPatch) -> None:
    line = "sha256:" + "ab" * 32
    # Pasted upper-case or with spaces, they are still the same hash.
    monkeypatch.setenv("RTINJURY_API_KEY_HASHES", f'["{line.upper()}", " {line} "]')
    assert Settings().api_key_hashes == [line, line]


def test_a_hash_that_is_not_one_is_refused_without_echoing_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTINJURY_API_KEY_HASHES", '["plaintext-key-pasted-by-mistake"]')
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "sha256:<64 hex>" in str(raised.value)
    assert "plaintext-key-pasted-by-mistake" not in str(raised.value.errors(include_input=False))


def test_a_short_development_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTINJURY_API_KEY", "dev")
    with pytest.raises(ValidationError, match="at least 16"):
        Settings()


def test_the_database_defaults_to_sqlite_under_the_storage_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTINJURY_STORAGE_ROOT", str(tmp_path))
    monkeypatch.delenv("RTINJURY_DATABASE_URL", raising=False)
    assert Settings().sqlalchemy_url == f"sqlite:///{tmp_path.resolve() / 'rtinjury.db'}"
    monkeypatch.setenv("RTINJURY_DATABASE_URL", "postgresql+psycopg://rtinjury@db/rtinjury")
    assert Settings().sqlalchemy_url == "postgresql+psycopg://rtinjury@db/rtinjury"


def test_upload_limits_and_zip_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTINJURY_MAX_UPLOAD_FILES", "500")
    settings = Settings()
    assert settings.max_upload_bytes == 4 * 1024**3
    assert settings.zip_limits == ZipLimits(max_entries=500, max_total_bytes=20 * 1024**3, max_ratio=1000.0)


def test_key_lines_may_carry_scopes_and_are_stored_in_one_form(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "ab" * 32
    lines = [f"SHA256:{digest} ; Scopes=Read, submit", f"sha256:{digest};scopes=admin,read,submit"]
    monkeypatch.setenv("RTINJURY_API_KEY_HASHES", json.dumps(lines))
    settings = Settings()
    # Every scope is the bare hash: the line existing deployments have, which keeps all three.
    assert settings.api_key_hashes == [f"sha256:{digest};scopes=submit,read", f"sha256:{digest}"]
    assert [sorted(line.scopes) for line in settings.api_keys] == [
        [Scope.READ, Scope.SUBMIT],
        [Scope.ADMIN, Scope.READ, Scope.SUBMIT],
    ]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "sha256:{digest};scopes=submit,sudo",
            "entry 1: unknown scope(s) sudo; scopes are submit, read, admin",
        ),
        ("sha256:{digest};scopes=", "entry 1: no scope given"),
        ("sha256:{digest};roles=admin", "entry 1: after ';' comes 'scopes=<names>'"),
        ("plaintext-key-pasted;scopes=read", "entry 1: not of the form 'sha256:<64 hex>"),
    ],
)
def test_a_bad_key_line_is_a_settings_error_that_names_the_entry(
    monkeypatch: pytest.MonkeyPatch, line: str, message: str
) -> None:
    digest = "cd" * 32
    monkeypatch.setenv(
        "RTINJURY_API_KEY_HASHES", json.dumps([f"sha256:{'ab' * 32}", line.format(digest=digest)])
    )
    with pytest.raises(ValidationError) as raised:
        Settings()
    errors = str(raised.value.errors(include_input=False))
    assert message in errors
    assert digest not in errors and "plaintext-key-pasted" not in errors
