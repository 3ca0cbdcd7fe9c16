"""``/v1/jobs/{id}/view``: the web viewer's routes over a real finished job.

A synthetic patient is uploaded through the API, then the worker's stages run in this process on
its folder (as ``rtinjury run`` does), once for the module. The view is checked against the
files the worker left: the follow-up, the lesion and the report, read back with SimpleITK.
Tests that change a job's files do it on a copy of the finished job, under a job of its own.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from service.api.auth import hash_api_key
from service.config import Settings
from service.main import create_app
from service.views import Layer
from tests.service.api.conftest import (
    API_KEY,
    KEY_SCOPES,
    TENANT_A_KEY,
    TENANT_B_KEY,
    bearer,
    upload,
    zip_folders,
)
from worker.jobs import handoff, pipeline
from worker.jobs.folder import JobFolder
from worker.jobs.progress import StatusReporter
from worker.runtime import get_runtime
from worker.stages.export.files import OUTPUT_FILES
from worker.viewer.layers import VIEW_FOLDER
from worker.viewer.volumes import DisplayGrid, Plane, display_reference, on_display_grid

pytestmark = pytest.mark.slow

OWNER = bearer(TENANT_A_KEY)
RGBA_LAYERS = {Layer.LESION, Layer.ISODOSE}


@dataclass(frozen=True)
class Job:
    id: str
    folder: JobFolder

    @property
    def view_path(self) -> str:
        return f"/v1/jobs/{self.id}/view"

    def slice_path(self, plane: str, index: int) -> str:
        return f"{self.view_path}/{plane}/{index}"


@pytest.fixture(scope="module")
def module_environment() -> Iterator[None]:
    """No RTINJURY_* variable of the machine reaches this module's app (as ``no_site_environment``
    does for one test: the app and the finished job here live as long as the module)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name.startswith("RTINJURY_"):
                patch.delenv(name)
        yield


@pytest.fixture(scope="module")
def view_settings(tmp_path_factory: pytest.TempPathFactory, module_environment: None) -> Settings:
    """Settings with one key per tenant (``KEY_SCOPES``), as ``scoped_settings`` has them."""
    lines = [f"{hash_api_key(key)};scopes={scopes}" for key, scopes in KEY_SCOPES.items()]
    root = tmp_path_factory.mktemp("viewer") / "storage"
    return Settings(storage_root=root, api_key=SecretStr(API_KEY), api_key_hashes=lines)


@pytest.fixture(scope="module")
def view_client(view_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(view_settings)) as client:
        yield client


def queued_job(client: TestClient, settings: Settings, body: bytes) -> Job:
    response = upload(client, body, headers=OWNER)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    return Job(job_id, JobFolder.under(settings.storage_root, job_id))


@pytest.fixture(scope="module")
def finished(view_client: TestClient, view_settings: Settings, synthetic_zip: bytes) -> Job:
    """The synthetic ORN patient uploaded by tenant A and run through every stage of the worker."""
    job = queued_job(view_client, view_settings, synthetic_zip)
    runtime = get_runtime(view_settings)
    pipeline.run_job(job.folder, view_settings, runtime, StatusReporter(job.folder))
    return job


@pytest.fixture
def small_zip(small_patients: dict[str, Path]) -> bytes:
    return zip_folders(small_patients["first"])


@pytest.fixture
def copy_of_finished(
    view_client: TestClient, view_settings: Settings, finished: Job, small_zip: bytes
) -> Job:
    """A job of tenant A of its own, whose folder holds what the finished job's worker left."""
    job = queued_job(view_client, view_settings, small_zip)
    for name in ("work", "outputs"):
        shutil.copytree(finished.folder.root / name, job.folder.root / name, dirs_exist_ok=True)
    shutil.copyfile(finished.folder.status_path, job.folder.status_path)
    return job


def view_of(client: TestClient, job: Job) -> dict[str, Any]:
    response = client.get(job.view_path, headers=OWNER)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def slice_of(client: TestClient, job: Job, plane: str, index: int, **params: str) -> tuple[str, np.ndarray]:
    """A slice PNG, decoded: its PIL mode and pixels (rows, columns[, 4])."""
    response = client.get(job.slice_path(plane, index), params=params, headers=OWNER)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        return image.mode, np.asarray(image)


def grid_of(view: dict[str, Any]) -> DisplayGrid:
    grid = view["grid"]
    return DisplayGrid(tuple(grid["size"]), tuple(grid["spacing_mm"]), tuple(grid["origin_mm"]))


def report_centroid(job: Job) -> tuple[float, float, float]:
    lesion = handoff.read_json(job.folder.outputs / OUTPUT_FILES["report"])["lesion"]
    assert not lesion["empty"], "the synthetic patient's lesion is found"
    x, y, z = lesion["centroid_mm"]
    return float(x), float(y), float(z)


def assert_problem(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def test_the_view_describes_the_followup_on_its_display_grid(view_client: TestClient, finished: Job) -> None:
    view = view_of(view_client, finished)

    followup = sitk.ReadImage(str(finished.folder.work / handoff.FOLLOWUP))
    shown = on_display_grid(followup, display_reference(followup))
    assert shown.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert tuple(view["grid"]["size"]) == shown.GetSize()
    assert view["grid"]["spacing_mm"] == pytest.approx(shown.GetSpacing())
    assert view["grid"]["origin_mm"] == pytest.approx(shown.GetOrigin())
    (nx, ny, nz), (sx, sy, sz) = shown.GetSize(), shown.GetSpacing()
    planes = {name: {k: v for k, v in p.items() if k != "start"} for name, p in view["planes"].items()}
    assert planes == {
        "axial": {"count": nz, "width": nx, "height": ny, "pixel_mm": pytest.approx([sx, sy])},
        "coronal": {"count": ny, "width": nx, "height": nz, "pixel_mm": pytest.approx([sx, sz])},
        "sagittal": {"count": nx, "width": ny, "height": nz, "pixel_mm": pytest.approx([sy, sz])},
    }
    assert (view["job_id"], view["state"], view["task"], view["modality"]) == (
        finished.id,
        "succeeded",
        "orn",
        "CT",
    )
    assert view["layers"] == {"lesion": True, "isodose": True, "planning": True}
    assert {"ct-bone", "ct-soft", "mr"} <= {w["id"] for w in view["windows"]}
    assert view["default_window"] == "ct-bone", "bone window for osteoradionecrosis on CT"
    assert [level["percent"] for level in view["isodose"]] == [50, 80, 95]
    assert view["version"] and view["clicks"] == [] and view["refinements"] == 0


def test_the_viewer_opens_on_the_slices_through_the_lesion_centroid(
    view_client: TestClient, finished: Job
) -> None:
    view = view_of(view_client, finished)
    grid = grid_of(view)
    centroid = report_centroid(finished)

    # Each start slice's plane passes within half a voxel of the centroid, along its own axis.
    for plane, axis in (("sagittal", 0), ("coronal", 1), ("axial", 2)):
        start = view["planes"][plane]["start"]
        slice_mm = grid.origin[axis] + start * grid.spacing[axis]
        assert abs(slice_mm - centroid[axis]) <= grid.spacing[axis] / 2 + 1e-6, plane


@pytest.mark.parametrize("layer", list(Layer), ids=str)
@pytest.mark.parametrize("plane", list(Plane), ids=str)
def test_every_layer_is_a_png_of_the_plane_size(
    view_client: TestClient, finished: Job, plane: Plane, layer: Layer
) -> None:
    shape = view_of(view_client, finished)["planes"][plane.value]

    mode, pixels = slice_of(view_client, finished, plane.value, shape["start"], layer=layer.value)

    assert mode == ("RGBA" if layer in RGBA_LAYERS else "L")
    assert pixels.shape[:2] == (shape["height"], shape["width"])


def lesion_under_pixels(
    job: Job, grid: DisplayGrid, plane: Plane, index: int, shape: tuple[int, int]
) -> np.ndarray:
    """Whether ``work/lesion.mha`` (on the follow-up grid) holds the lesion at each pixel's
    ``point_mm``: the nearest lesion voxel, outside the mask counting as no lesion."""
    mask = sitk.ReadImage(str(job.folder.work / handoff.LESION))
    values = sitk.GetArrayViewFromImage(mask)
    found = np.zeros(shape, bool)
    for row in range(shape[0]):
        for column in range(shape[1]):
            point = grid.point_mm(grid.voxel(plane, index, column, row))
            i, j, k = mask.TransformPhysicalPointToIndex(point)
            if 0 <= i < mask.GetSize()[0] and 0 <= j < mask.GetSize()[1] and 0 <= k < mask.GetSize()[2]:
                found[row, column] = values[k, j, i] > 0
    return found


def test_the_lesion_overlay_lies_where_the_lesion_mask_is(view_client: TestClient, finished: Job) -> None:
    view = view_of(view_client, finished)
    grid, index = grid_of(view), view["planes"]["axial"]["start"]

    _, pixels = slice_of(view_client, finished, "axial", index, layer="lesion")

    shown = pixels[..., 3] > 0
    assert shown.any(), "the start slice passes through the lesion"
    expected = lesion_under_pixels(finished, grid, Plane.AXIAL, index, shown.shape)
    assert np.array_equal(shown, expected)


def test_window_presets_change_the_grey_levels(view_client: TestClient, finished: Job) -> None:
    index = view_of(view_client, finished)["planes"]["axial"]["start"]

    greys = {
        w: slice_of(view_client, finished, "axial", index, window=w)[1] for w in ("ct-bone", "ct-soft", "mr")
    }
    default = slice_of(view_client, finished, "axial", index)[1]

    assert not np.array_equal(greys["ct-bone"], greys["ct-soft"])
    assert not np.array_equal(greys["ct-bone"], greys["mr"])
    assert not np.array_equal(greys["ct-soft"], greys["mr"])
    assert np.array_equal(default, greys["ct-bone"]), "ORN on CT opens in the bone window"


def test_a_slice_of_the_current_version_may_be_kept_and_no_other(
    view_client: TestClient, finished: Job
) -> None:
    version = view_of(view_client, finished)["version"]
    path = finished.slice_path("axial", 0)

    current = view_client.get(path, params={"layer": "lesion", "v": version}, headers=OWNER)
    stale = view_client.get(path, params={"layer": "lesion", "v": f"{version}-old"}, headers=OWNER)
    unversioned = view_client.get(path, params={"layer": "lesion"}, headers=OWNER)

    assert current.status_code == stale.status_code == unversioned.status_code == 200
    assert "max-age=" in current.headers["cache-control"]
    assert stale.headers["cache-control"] == "no-store"
    assert unversioned.headers["cache-control"] == "no-store"


def test_a_new_lesion_file_changes_the_version_and_the_overlay(
    view_client: TestClient, copy_of_finished: Job
) -> None:
    before = view_of(view_client, copy_of_finished)
    index = before["planes"]["axial"]["start"]
    _, was = slice_of(view_client, copy_of_finished, "axial", index, layer="lesion")
    assert (was[..., 3] > 0).any()

    # What a refinement does: a new lesion mask in work/ (here an empty one).
    path = copy_of_finished.folder.work / handoff.LESION
    lesion = sitk.ReadImage(str(path))
    empty = sitk.Image(lesion.GetSize(), lesion.GetPixelID())
    empty.CopyInformation(lesion)
    sitk.WriteImage(empty, str(path), useCompression=True)

    after = view_of(view_client, copy_of_finished)
    assert after["version"] != before["version"]
    assert after["layers"]["lesion"] is True
    _, now = slice_of(view_client, copy_of_finished, "axial", index, layer="lesion", v=after["version"])
    assert not (now[..., 3] > 0).any()


def test_a_slice_outside_the_plane_is_not_found(view_client: TestClient, finished: Job) -> None:
    count = view_of(view_client, finished)["planes"]["coronal"]["count"]

    assert view_client.get(finished.slice_path("coronal", count - 1), headers=OWNER).status_code == 200
    assert_problem(
        view_client.get(finished.slice_path("coronal", count), headers=OWNER), 404, "slice-not-found"
    )


@pytest.mark.parametrize(
    ("path", "params"),
    [("oblique/0", {}), ("axial/0", {"layer": "dose"}), ("axial/-1", {}), ("axial/0", {"window": "W1"})],
    ids=["unknown-plane", "unknown-layer", "negative-index", "bad-window-id"],
)
def test_unknown_planes_and_layers_are_refused(
    view_client: TestClient, finished: Job, path: str, params: dict[str, str]
) -> None:
    response = view_client.get(f"{finished.view_path}/{path}", params=params, headers=OWNER)

    assert_problem(response, 422, "validation-error")


def test_an_unknown_window_preset_is_refused_with_the_presets_named(
    view_client: TestClient, finished: Job
) -> None:
    response = view_client.get(finished.slice_path("axial", 0), params={"window": "lung"}, headers=OWNER)

    assert_problem(response, 404, "window-not-found")
    assert "ct-bone" in response.json()["detail"]


def test_a_queued_job_has_nothing_to_view_yet(
    view_client: TestClient, view_settings: Settings, small_zip: bytes
) -> None:
    job = queued_job(view_client, view_settings, small_zip)

    assert_problem(view_client.get(job.view_path, headers=OWNER), 409, "view-not-ready")
    assert_problem(view_client.get(job.slice_path("axial", 0), headers=OWNER), 409, "view-not-ready")


def test_another_tenants_job_is_not_found(view_client: TestClient, finished: Job) -> None:
    other = bearer(TENANT_B_KEY)

    assert_problem(view_client.get(finished.view_path, headers=other), 404, "job-not-found")
    assert_problem(view_client.get(finished.slice_path("axial", 0), headers=other), 404, "job-not-found")
    assert view_client.get(finished.view_path, headers=OWNER).status_code == 200


def test_the_view_needs_a_key(view_client: TestClient, finished: Job) -> None:
    assert_problem(view_client.get(finished.view_path), 401, "unauthorized")
    assert_problem(view_client.get(finished.slice_path("axial", 0)), 401, "unauthorized")


def test_a_job_prepared_before_the_viewer_gets_its_layers_on_first_view_without_planning(
    view_client: TestClient, copy_of_finished: Job
) -> None:
    work = copy_of_finished.folder.work
    before = view_of(view_client, copy_of_finished)
    assert before["layers"]["planning"] is True
    index = before["planes"]["axial"]["start"]

    # What a job prepared before the viewer existed has: its images, no view/ (so no planning CT
    # on the follow-up either).
    shutil.rmtree(work / VIEW_FOLDER)

    view = view_of(view_client, copy_of_finished)
    assert (work / VIEW_FOLDER / "view.json").is_file(), "the layers are made once, on first view"
    assert view["grid"] == before["grid"] and view["isodose"] == before["isodose"]
    assert view["layers"] == {"lesion": True, "isodose": True, "planning": False}
    for layer in ("planning", "checkerboard"):
        response = view_client.get(
            copy_of_finished.slice_path("axial", index), params={"layer": layer}, headers=OWNER
        )
        assert_problem(response, 404, "layer-not-found")
    assert slice_of(view_client, copy_of_finished, "axial", index)[0] == "L"


def test_opening_the_images_is_in_the_audit_trail_and_scrolling_is_not(
    view_client: TestClient, copy_of_finished: Job
) -> None:
    view_client.get(copy_of_finished.view_path, headers=OWNER)
    for index in range(3):
        view_client.get(copy_of_finished.slice_path("axial", index), headers=OWNER)

    answer = view_client.get(
        "/v1/audit-events", params={"job_id": copy_of_finished.id}, headers=bearer(API_KEY)
    )
    assert answer.status_code == 200, answer.text
    events = answer.json()["data"]

    actions = [event["action"] for event in events]
    assert actions.count("view") == 1, actions
    assert all(event["status"] == 200 for event in events if event["action"] == "view")
    assert "download" not in actions, "a slice is no download"
