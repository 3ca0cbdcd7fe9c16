"""QA figures and plausibility flags: implausible registrations are flagged, good ones are not."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from tests.worker.stages.register.conftest import SynthPair
from worker.stages.register.images import ImagePair, image_centre, prepare_pair
from worker.stages.register.qa import assess, field_jacobian_range, plausibility_flags
from worker.stages.register.result import RegistrationQA
from worker.stages.register.similarity import MetricSettings
from worker.stages.register.transforms import compose

PairFactory = Callable[[str], SynthPair]


@pytest.fixture(scope="module")
def orn(synth_pair: PairFactory) -> tuple[ImagePair, sitk.Euler3DTransform]:
    """The working pair of the ORN case and the rigid part of its true transform."""
    synth = synth_pair("orn")
    pair = prepare_pair(synth.fixed, synth.moving, fixed_modality="CT", spacing_mm=2.0)
    truth = synth.truth
    rigid = sitk.Euler3DTransform()
    rigid.SetCenter([float(v) for v in truth.center])
    rigid.SetRotation(*(float(a) for a in truth.angles_rad))
    rigid.SetTranslation([float(v) for v in truth.translation])
    return pair, rigid


def _about_centre(pair: ImagePair, angle_deg: float = 0.0, shift_mm: float = 0.0) -> sitk.Euler3DTransform:
    extra = sitk.Euler3DTransform()
    extra.SetCenter([float(v) for v in image_centre(pair.fixed.image)])
    extra.SetRotation(0.0, 0.0, float(np.radians(angle_deg)))
    extra.SetTranslation([shift_mm, 0.0, 0.0])
    return extra


def test_the_true_transform_is_not_flagged(orn: tuple[ImagePair, sitk.Euler3DTransform]) -> None:
    pair, truth = orn
    qa = assess(pair, truth, MetricSettings())
    assert plausibility_flags(qa) == []
    assert qa.metric_after is not None and qa.metric_before is not None and qa.metric_after < qa.metric_before
    assert qa.body_overlap_after is not None and qa.body_overlap_after > 0.95
    assert qa.rotation_degrees == pytest.approx(np.degrees(np.arccos((np.trace(_matrix(truth)) - 1) / 2)))
    assert qa.jacobian_min is None  # rigid: no deformable part


def _matrix(transform: sitk.Euler3DTransform) -> np.ndarray:
    return np.array(transform.GetMatrix()).reshape(3, 3)


def test_a_30_degree_rotation_is_flagged(orn: tuple[ImagePair, sitk.Euler3DTransform]) -> None:
    pair, truth = orn
    qa = assess(pair, compose(truth, _about_centre(pair, angle_deg=30.0)), MetricSettings())
    flags = plausibility_flags(qa)
    assert any(flag.startswith("rotation") and "above 20°" in flag for flag in flags), flags


def test_a_100_mm_shift_is_flagged(orn: tuple[ImagePair, sitk.Euler3DTransform]) -> None:
    pair, truth = orn
    qa = assess(pair, compose(truth, _about_centre(pair, shift_mm=100.0)), MetricSettings())
    flags = plausibility_flags(qa)
    assert any(flag.startswith("translation") and "above 80 mm" in flag for flag in flags), flags
    # The body no longer overlaps as well as the scans did before registration.
    assert any("body overlap" in flag for flag in flags), flags


def _folding_field(reference: sitk.Image) -> sitk.DisplacementFieldTransform:
    """u_x = A sin(2π x / λ) with 2πA/λ = 1.5: ∂x'/∂x = 1 + 1.5 cos(·) goes down to -0.5."""
    x = np.arange(reference.GetSize()[0]) * reference.GetSpacing()[0]
    x_mm = np.broadcast_to(x, reference.GetSize()[::-1])
    wavelength = 40.0
    amplitude = 1.5 * wavelength / (2 * np.pi)
    vectors = np.zeros((*x_mm.shape, 3))
    vectors[..., 0] = amplitude * np.sin(2 * np.pi * x_mm / wavelength)
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.CopyInformation(reference)
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def test_a_folding_field_is_flagged(orn: tuple[ImagePair, sitk.Euler3DTransform]) -> None:
    pair, truth = orn
    qa = assess(pair, compose(truth, _folding_field(pair.fixed.image)), MetricSettings())
    assert qa.jacobian_min is not None and qa.jacobian_min <= 0.0
    assert any(flag.startswith("folding") for flag in plausibility_flags(qa))


def test_a_smooth_field_has_jacobian_near_one(orn: tuple[ImagePair, sitk.Euler3DTransform]) -> None:
    pair, _ = orn
    field = _folding_field(pair.fixed.image).GetDisplacementField()
    gentle = sitk.Compose([sitk.VectorIndexSelectionCast(field, i) * 0.05 for i in range(3)])
    low, high = field_jacobian_range(gentle)
    assert 0.9 < low < 1.0 < high < 1.1


def test_flag_rules_on_figures() -> None:
    good = RegistrationQA(
        metric_before=-0.3, metric_after=-1.1, body_overlap_before=0.9, body_overlap_after=0.97
    )
    assert plausibility_flags(good) == []
    cases = {
        "Jacobian determinant 0.30–1.20 outside 0.5–2": RegistrationQA(
            metric_before=-0.3, metric_after=-1.1, body_overlap_after=0.97, jacobian_min=0.3, jacobian_max=1.2
        ),
        "body overlap (Dice) 0.600 is below 0.8": RegistrationQA(
            metric_before=-0.3, metric_after=-1.1, body_overlap_after=0.6
        ),
        "body overlap (Dice) got worse": RegistrationQA(
            metric_before=-0.3, metric_after=-1.1, body_overlap_before=0.95, body_overlap_after=0.9
        ),
        "similarity metric not improved": RegistrationQA(
            metric_before=-0.9, metric_after=-0.5, body_overlap_after=0.97
        ),
        "no body overlap": RegistrationQA(metric_before=-0.9, metric_after=-1.0),
        "similarity metric not computable": RegistrationQA(body_overlap_after=0.97),
    }
    for expected, qa in cases.items():
        flags = plausibility_flags(qa)
        assert any(expected in flag for flag in flags), (expected, flags)


def test_already_aligned_scans_are_not_flagged_for_an_unchanged_metric() -> None:
    same = RegistrationQA(
        metric_before=-1.0, metric_after=-0.999, body_overlap_before=0.98, body_overlap_after=0.98
    )
    assert plausibility_flags(same) == []
