"""``rtinjury synth`` then ``rtinjury inspect``: the synthetic patients assemble into full cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.service.cli.runner import rtinjury


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    result = rtinjury("synth", "--out", str(root), "--task", "all", "--cases", "1", "--seed", "3")
    assert result.returncode == 0, result.stderr
    assert [Path(line).name for line in result.stdout.split()] == ["orn-000", "ce-000", "crn-000"]
    return root


@pytest.mark.parametrize(
    ("task", "modality", "kind"), [("orn", "CT", "ct"), ("ce", "MR", "flair"), ("crn", "MR", "t1c")]
)
def test_inspect_finds_every_role_and_the_dose(synth_root: Path, task: str, modality: str, kind: str) -> None:
    folder = synth_root / f"{task}-000"
    truth = json.loads((folder / "case.json").read_text())
    result = rtinjury("inspect", str(folder), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [case] = report["cases"]
    assert (case["task"], case["followup_kind"], case["followup"]["modality"]) == (task, kind, modality)
    assert case["planning_ct"]["modality"] == "CT"
    assert case["planning_ct"]["frame_of_reference_uid"] == truth["planning"]["frame_of_reference_uid"]
    assert case["followup"]["series_instance_uid"] == truth["followups"][0]["series_instance_uid"]
    assert case["rtdose"]["frame_of_reference_uid"] == truth["planning"]["frame_of_reference_uid"]
    assert case["rtdose"]["max_gy"] == pytest.approx(truth["dose"]["max_gy"], abs=0.01)
    assert 60.0 <= case["rtdose"]["max_gy"] <= 70.0
    assert case["rtplan"]["prescription_gy"] == truth["clinical"]["prescription_gy"]
    assert case["rtplan"]["fractions"] == truth["clinical"]["fractions"]
    assert case["seg"] == 1 and case["registration_needed"] is True
    assert case["warnings"] == []


def test_synth_refuses_bad_arguments_in_one_line(tmp_path: Path) -> None:
    result = rtinjury("synth", "--out", str(tmp_path), "--cases", "0")
    assert result.returncode == 2
    assert result.stderr.startswith("rtinjury: error: ") and len(result.stderr.splitlines()) == 1


def test_inspect_prompt_shows_registration_region_and_box(synth_root: Path) -> None:
    folder = synth_root / "crn-000"
    truth = json.loads((folder / "case.json").read_text())
    result = rtinjury("inspect", str(folder), "--prompt", "--json")
    assert result.returncode == 0, result.stderr
    prompt = json.loads(result.stdout)["cases"][0]["prompt"]
    registration, region = prompt["registration"], prompt["high_dose_region"]
    assert registration["method"] == "rigid" and registration["flags"] == []
    assert registration["body_overlap_after"] > registration["body_overlap_before"]
    assert region["tau"] == 0.8 and region["threshold_gy"] == pytest.approx(0.8 * region["dmax_gy"], abs=1e-3)
    # The lesion centroid (follow-up coordinates) lies within the box of r.
    low = np.minimum(region["box_corner_min_mm"], region["box_corner_max_mm"])
    high = np.maximum(region["box_corner_min_mm"], region["box_corner_max_mm"])
    centroid = np.asarray(truth["lesion"]["centroid_followup_mm"])
    assert np.all(centroid >= low) and np.all(centroid <= high)
    assert prompt["region_dose"]["mean_gy"] >= region["threshold_gy"]
    text = rtinjury("inspect", str(folder), "--prompt")
    assert "high dose    dose ≥ 0.8·Dmax" in text.stdout and "registration rigid" in text.stdout
