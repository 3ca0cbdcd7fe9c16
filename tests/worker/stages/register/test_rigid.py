"""The rigid stage's start search and its failure path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from tests.worker.stages.register.conftest import SynthPair, tre
from worker.errors import RegistrationError
from worker.stages.register.images import ImagePair, WorkingImage, coarsen, prepare_pair
from worker.stages.register.rigid import RigidSettings, ranked_starts, register_rigid, start_transforms
from worker.stages.register.similarity import MetricSettings

PairFactory = Callable[[str], SynthPair]


def test_a_slab_follow_up_is_swept_along_the_planning_ct(synth_pair: PairFactory) -> None:
    # The ORN follow-up covers 96 mm of a 180 mm planning CT: aligning the image centres
    # (GEOMETRY) puts it ~50 mm too high; the sweep and the scanner coordinates do not.
    synth = synth_pair("orn")
    pair = coarsen(prepare_pair(synth.fixed, synth.moving, fixed_modality="CT", spacing_mm=2.0), 4.0)
    starts = start_transforms(pair, RigidSettings())
    geometry = starts[1]
    assert len(starts) > 3, "identity, GEOMETRY, MOMENTS and a sweep"
    assert tre(geometry, synth.truth.apply, synth.points).mean() > 30.0
    best = ranked_starts(pair, MetricSettings(), RigidSettings())[0]
    assert tre(best, synth.truth.apply, synth.points).mean() < 20.0


def test_no_overlap_anywhere_fails_after_a_retry_with_more_smoothing(synth_pair: PairFactory) -> None:
    synth = synth_pair("orn")
    pair = prepare_pair(synth.fixed, synth.moving, fixed_modality="CT", spacing_mm=2.0)
    constant = sitk.Image(pair.moving.image.GetSize(), sitk.sitkFloat32)
    constant.CopyInformation(pair.moving.image)
    flat = ImagePair(pair.fixed, WorkingImage(constant, pair.moving.body), pair.spacing_mm)
    with pytest.raises(
        RegistrationError, match=r"rigid registration failed: .* \(also after more smoothing\)"
    ):
        register_rigid(flat, MetricSettings())


def test_start_transforms_rotate_about_the_fixed_body(synth_pair: PairFactory) -> None:
    synth = synth_pair("orn")
    pair = prepare_pair(synth.fixed, synth.moving, fixed_modality="CT", spacing_mm=2.0)
    centres = {tuple(np.round(t.GetCenter(), 6)) for t in start_transforms(pair, RigidSettings())}
    assert len(centres) == 1
