"""Accuracy of the intensity-based registration on synthetic patients with a known transform.

The synthetic truth is a rigid misalignment (1–4° per axis, 5–15 mm) plus a smooth Gaussian
deformation of up to 2.5 mm, so a rigid result cannot be exact: the TRE is measured against the
full true transform, at 200 points inside the follow-up body.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from tests.worker.stages.register.conftest import SynthPair, tre
from worker.errors import InputError, RegistrationError
from worker.stages.register.intensity import _reason_to_discard, register_images
from worker.stages.register.result import RegistrationMethod, RegistrationQA, RegistrationResult
from worker.stages.register.transforms import parts

PairFactory = Callable[[str], SynthPair]


@pytest.fixture(scope="module")
def orn_rigid(synth_pair: PairFactory) -> RegistrationResult:
    pair = synth_pair("orn")
    return register_images(pair.fixed, pair.moving, fixed_modality="CT", deformable=False)


@pytest.fixture(scope="module")
def orn_default(synth_pair: PairFactory) -> RegistrationResult:
    pair = synth_pair("orn")
    return register_images(pair.fixed, pair.moving, fixed_modality="CT")


@pytest.fixture(scope="module")
def mr_default(synth_pair: PairFactory) -> dict[str, RegistrationResult]:
    results = {}
    for task in ("ce", "crn"):
        pair = synth_pair(task)
        results[task] = register_images(pair.fixed, pair.moving, fixed_modality=pair.modality)
    return results


def test_rigid_ct_to_ct_within_1_mm(synth_pair: PairFactory, orn_rigid: RegistrationResult) -> None:
    pair = synth_pair("orn")
    errors = tre(orn_rigid.transform, pair.truth.apply, pair.points)
    before = tre(sitk.Transform(3, sitk.sitkIdentity), pair.truth.apply, pair.points)
    assert before.mean() > 5.0, "the synthetic misalignment is real"
    assert errors.mean() <= 1.0, errors.mean()
    assert orn_rigid.method is RegistrationMethod.RIGID
    assert not orn_rigid.needs_review, orn_rigid.flags


@pytest.mark.parametrize("task", ["ce", "crn"])
def test_rigid_mr_to_ct_within_2_mm(
    synth_pair: PairFactory, mr_default: dict[str, RegistrationResult], task: str
) -> None:
    pair = synth_pair(task)
    result = mr_default[task]
    assert pair.modality == "MR"
    assert tre(result.transform, pair.truth.apply, pair.points).mean() <= 2.0
    assert not result.needs_review, result.flags


def test_mr_follow_up_stays_rigid_by_default(mr_default: dict[str, RegistrationResult]) -> None:
    for result in mr_default.values():
        assert result.method is RegistrationMethod.RIGID
        assert result.qa.jacobian_min is None
        assert any("not tried" in note for note in result.notes)


def test_ct_follow_up_keeps_a_deformable_refinement_that_improves(
    synth_pair: PairFactory, orn_rigid: RegistrationResult, orn_default: RegistrationResult
) -> None:
    pair = synth_pair("orn")
    assert orn_default.method is RegistrationMethod.RIGID_BSPLINE, orn_default.notes
    rigid_tre = tre(orn_rigid.transform, pair.truth.apply, pair.points).mean()
    deformable_tre = tre(orn_default.transform, pair.truth.apply, pair.points).mean()
    # The deformable part recovers some of the true bump (0.42 → 0.26 mm when measured).
    assert deformable_tre < rigid_tre
    qa = orn_default.qa
    assert qa.jacobian_min is not None and qa.jacobian_max is not None
    assert 0.5 < qa.jacobian_min <= 1.0 <= qa.jacobian_max < 2.0
    assert qa.metric_after is not None and orn_rigid.qa.metric_after is not None
    assert qa.metric_after < orn_rigid.qa.metric_after
    assert not orn_default.needs_review, orn_default.flags


def test_deformable_result_reaches_the_edges_of_the_scan(
    synth_pair: PairFactory, orn_default: RegistrationResult
) -> None:
    # A B-spline is the identity outside its domain: if the domain stopped short of the scan's
    # outermost voxels (or of the 2 mm field's half-voxel margin around them), the transform
    # would jump there, and the dose there would be carried over rigidly.
    fixed = synth_pair("orn").fixed
    bspline = next(p for p in parts(orn_default.transform) if isinstance(p, sitk.BSplineTransform))
    direction = np.array(bspline.GetTransformDomainDirection()).reshape(3, 3)
    origin = np.array(bspline.GetTransformDomainOrigin())
    dimensions = np.array(bspline.GetTransformDomainPhysicalDimensions())
    size = np.array(fixed.GetSize()) - 1
    for bits in np.ndindex(2, 2, 2):
        corner = np.array(fixed.TransformIndexToPhysicalPoint([int(c) for c in size * np.array(bits)]))
        outward = np.where(np.array(bits) > 0, 1.0, -1.0)  # 1 mm further out, along each axis
        local = direction.T @ (corner + outward - origin)
        assert np.all(local >= 0) and np.all(local <= dimensions), (corner, local, dimensions)


def test_qa_figures_describe_the_registration(orn_rigid: RegistrationResult) -> None:
    qa = orn_rigid.qa
    assert qa.metric_before is not None and qa.metric_after is not None
    assert qa.metric_after < qa.metric_before  # Mattes MI: lower is better
    assert qa.body_overlap_before is not None and qa.body_overlap_after is not None
    assert qa.body_overlap_after > max(0.95, qa.body_overlap_before)
    assert 1.0 < qa.rotation_degrees < 10.0  # the synthetic rotation is 1–4° per axis
    assert 3.0 < qa.translation_mm < 30.0
    assert qa.seconds > 0


def test_same_seed_same_transform(synth_pair: PairFactory, mr_default: dict[str, RegistrationResult]) -> None:
    pair = synth_pair("crn")
    again = register_images(pair.fixed, pair.moving, fixed_modality="MR", seed=42, threads=2)
    first = np.array(mr_default["crn"].transform.GetParameters())
    # Not bit-identical (ITK's threaded sums), but equal far below any clinical relevance.
    np.testing.assert_allclose(np.array(again.transform.GetParameters()), first, atol=1e-6)


def test_an_empty_follow_up_cannot_be_registered(synth_pair: PairFactory) -> None:
    pair = synth_pair("orn")
    blank = sitk.Image(pair.fixed.GetSize(), sitk.sitkFloat32)
    blank.CopyInformation(pair.fixed)
    with pytest.raises(RegistrationError, match="no body found in the follow-up"):
        register_images(blank, pair.moving, fixed_modality="MR")


def test_a_2d_image_is_refused(synth_pair: PairFactory) -> None:
    pair = synth_pair("orn")
    with pytest.raises(InputError, match="3D volume with at least 4 voxels"):
        register_images(pair.fixed[:, :, 10], pair.moving, fixed_modality="CT")


def test_threads_must_be_positive(synth_pair: PairFactory) -> None:
    pair = synth_pair("orn")
    with pytest.raises(ValueError, match="threads"):
        register_images(pair.fixed, pair.moving, fixed_modality="CT", threads=0)


def test_deformable_keep_rule() -> None:
    rigid = RegistrationQA(metric_after=-1.00, body_overlap_after=0.97)

    def refined(metric: float, jacobian: tuple[float, float], overlap: float) -> RegistrationQA:
        return RegistrationQA(
            metric_after=metric,
            body_overlap_after=overlap,
            jacobian_min=jacobian[0],
            jacobian_max=jacobian[1],
        )

    assert _reason_to_discard(rigid, refined(-1.05, (0.8, 1.2), 0.97)) is None
    assert "metric gain 0.5%" in str(_reason_to_discard(rigid, refined(-1.005, (0.8, 1.2), 0.97)))
    assert "Jacobian" in str(_reason_to_discard(rigid, refined(-1.05, (-0.1, 1.2), 0.97)))
    assert "Jacobian" in str(_reason_to_discard(rigid, refined(-1.05, (0.8, 2.5), 0.97)))
    assert "body overlap dropped" in str(_reason_to_discard(rigid, refined(-1.05, (0.8, 1.2), 0.90)))
