from pathlib import Path

import pytest

from service.config import Settings


def test_settings_come_from_prefixed_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTINJURY_ROLE_RULES", str(tmp_path / "site.yaml"))
    monkeypatch.setenv("RTINJURY_STORAGE_ROOT", str(tmp_path))
    settings = Settings()
    assert settings.role_rules == tmp_path / "site.yaml"
    assert settings.storage_root == tmp_path


def test_defaults_need_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTINJURY_ROLE_RULES", raising=False)
    assert Settings().role_rules is None
