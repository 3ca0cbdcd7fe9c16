"""Training crops: placement on the lesion or in the box, padding, the box prompt inside a crop."""

from __future__ import annotations

import numpy as np

from models.training.dataset import collate, crop_box, crop_start, extract, make_sample
from tests.models.training.cases import sphere_case


def test_extract_pads_beyond_the_volume_with_the_pad_value() -> None:
    volume = np.arange(27, dtype=np.float32).reshape(3, 3, 3)
    block = extract(volume, (-1, 1, 2), 3, pad_value=-5.0)
    assert block[0].min() == -5.0  # i = -1 lies outside
    assert block[1, 0, 0] == volume[0, 1, 2]
    assert block[1, 0, 1] == -5.0  # k = 3 lies outside
    assert np.all(extract(volume, (10, 10, 10), 3, pad_value=7.0) == 7.0)


def test_most_crops_hold_the_lesion_and_all_overlap_the_box() -> None:
    case = sphere_case(1)
    rng = np.random.default_rng(0)
    holding = 0
    for _ in range(200):
        start = crop_start(case, 32, rng)
        sample_lesion = extract(case.lesion, start, 32, 0.0)
        holding += bool(sample_lesion.any())
        centre = start + 16
        assert np.all(centre >= case.box_lo - 16 - 1) and np.all(centre <= case.box_hi + 16 + 1)
    # 70 % are placed on the lesion; box-wide crops catch it now and then too.
    assert 0.65 <= holding / 200 <= 0.95


def test_box_prompt_is_the_box_of_r_inside_the_crop() -> None:
    roi = np.zeros((16, 16, 16), dtype=np.float32)
    roi[3:9, 5:16, 0:4] = 1
    lo, hi = crop_box(roi, np.array([-10.0, 0, 0]), np.array([30.0, 30, 30]), 16)
    assert lo.tolist() == [3, 5, 0] and hi.tolist() == [8, 15, 3]
    # r outside the crop: the case box, clipped.
    lo, hi = crop_box(np.zeros_like(roi), np.array([-10.0, 2, 3]), np.array([30.0, 12, 40]), 16)
    assert lo.tolist() == [0, 2, 3] and hi.tolist() == [15, 12, 15]


def test_samples_keep_image_and_masks_aligned_and_collate_to_batches() -> None:
    case = sphere_case(2)
    rng = np.random.default_rng(3)
    samples = [make_sample(case, 32, rng) for _ in range(4)]
    for sample in samples:
        # Without augmentation the lesion voxels are the bright ones (2 + noise), the rest noise.
        inside = sample.lesion > 0
        if inside.any():
            assert sample.image[inside].mean() > 1.8 and abs(sample.image[~inside].mean()) < 0.1
        assert np.all(sample.box_lo <= sample.box_hi)
    batch = collate(samples)
    assert batch["image"].shape == (4, 1, 32, 32, 32) and batch["image"].dtype == np.float32
    assert batch["box"].shape == (4, 2, 3)
    assert batch["text_index"].tolist() == [0, 0, 0, 0]
