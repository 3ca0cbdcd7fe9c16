from fastapi.testclient import TestClient

from service import __version__
from service.main import create_app


def test_health_reports_ok_and_version() -> None:
    response = TestClient(create_app()).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "version": __version__}
