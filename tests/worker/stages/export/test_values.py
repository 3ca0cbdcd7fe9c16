"""DS values copied from a sloppy source are made valid before we write them."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from worker.stages.export.values import fit_decimal_strings


@pytest.fixture
def lenient() -> None:
    # Such a value can only exist in a dataset read leniently (pydicom's default); the suite is strict.
    pydicom.config.settings.reading_validation_mode = pydicom.config.WARN


def test_long_values_are_shortened_in_nested_items(lenient: None) -> None:
    inner = Dataset()
    ds = Dataset()
    with pytest.warns(UserWarning, match="exceeds the maximum length of 16"):
        inner.add_new("ImagePositionPatient", "DS", ["-9.190000000000001", "-29.189999999999998", "12.5"])
        ds.add_new("SliceThickness", "DS", "2.0000000000000004")
    ds.PerFrameFunctionalGroupsSequence = Sequence([Dataset()])
    ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence = Sequence([inner])
    ds.add_new("PixelSpacing", "DS", ["0.5", "0.5"])
    assert fit_decimal_strings(ds) == 2
    values = [str(v) for v in inner.ImagePositionPatient] + [str(ds.SliceThickness)]
    assert all(len(v) <= 16 for v in values)
    assert [float(v) for v in inner.ImagePositionPatient] == pytest.approx([-9.19, -29.19, 12.5], abs=1e-9)
    assert [str(v) for v in ds.PixelSpacing] == ["0.5", "0.5"]  # untouched
