"""The true transform: convention, inverse, serialisation, agreement with SimpleITK."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from models.synth.transform import TrueTransform, apply_true_transform, sample_transform


@pytest.fixture
def transform() -> TrueTransform:
    rng = np.random.default_rng(7)
    return sample_transform(rng, np.array([0.0, 0.0, -20.0]), np.array([40.0, -5.0, -10.0]))


def test_sampled_ranges(transform: TrueTransform) -> None:
    degrees = np.abs(np.degrees(transform.angles_rad))
    assert np.all((degrees >= 1.0) & (degrees <= 4.0))
    assert 5.0 <= np.linalg.norm(transform.translation) <= 15.0
    assert 1.5 <= np.linalg.norm(transform.bump_amplitude) <= 2.5


def test_inverse_round_trip(transform: TrueTransform) -> None:
    points = np.random.default_rng(0).uniform(-100, 100, size=(50, 3))
    back = transform.apply_inverse(transform.apply(points))
    np.testing.assert_allclose(back, points, atol=1e-6)


def test_dict_round_trip_through_json(transform: TrueTransform) -> None:
    data = json.loads(json.dumps(transform.to_dict()))
    points = np.array([[10.0, -20.0, 30.0], [-50.0, 5.0, -80.0]])
    np.testing.assert_allclose(apply_true_transform(data, points), transform.apply(points))
    np.testing.assert_allclose(data["rigid"]["matrix"], transform.matrix)


def test_matches_simpleitk_composite(transform: TrueTransform) -> None:
    # Build the documented SimpleITK equivalent: Euler3D after a displacement
    # field sampled on a grid; at the grid nodes the field is exact.
    spacing, size, origin = 5.0, 16, np.array([-40.0, -45.0, -50.0])
    axis = np.arange(size) * spacing
    zz, yy, xx = np.meshgrid(axis + origin[2], axis + origin[1], axis + origin[0], indexing="ij")
    nodes = np.stack([xx, yy, zz], axis=-1)
    field = sitk.GetImageFromArray(transform.displacement(nodes), isVector=True)
    field.SetOrigin(origin.tolist())
    field.SetSpacing([spacing] * 3)
    euler = sitk.Euler3DTransform(
        transform.center.tolist(), *transform.angles_rad.tolist(), transform.translation.tolist()
    )
    composite = sitk.CompositeTransform([euler, sitk.DisplacementFieldTransform(field)])
    picks = nodes.reshape(-1, 3)[::97]
    expected = np.array([composite.TransformPoint(p.tolist()) for p in picks])
    np.testing.assert_allclose(transform.apply(picks), expected, atol=1e-6)
