"""Benchmark: reading a CT series with our reader against SimpleITK's GDCM series reader.

Writes a synthetic 512×512×N CT series (int16, explicit VR little endian) into a temporary folder,
then times both readers on the same files in alternating rounds and prints the medians and their
ratio. The reference is measured in the same run, so the ratio is what to compare across
machines.

    python benchmarks/read_series.py [--slices 150] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.factories import SeriesSpec, axial_positions, write_series
from worker.stages.read.series import read_image_series


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _sitk_read(paths: list[Path]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(p) for p in paths])
    return reader.Execute()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        spec = SeriesSpec(
            positions=axial_positions(args.slices, 1.0), rows=512, cols=512, pixel_spacing=(0.5, 0.5)
        )
        paths = write_series(spec, Path(tmp))
        ordered = sorted(paths)
        ours, reference = [], []
        for _ in range(args.rounds):
            ours.append(_time(lambda: read_image_series(paths)))
            reference.append(_time(lambda: _sitk_read(ordered)))
        a, b = read_image_series(paths).image, _sitk_read(ordered)
        same = np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b).astype(np.float32))
    ours_s, ref_s = statistics.median(ours), statistics.median(reference)
    sys.stdout.write(
        f"series 512x512x{args.slices}: rtinjury read_image_series {ours_s:.2f} s, "
        f"SimpleITK ImageSeriesReader {ref_s:.2f} s, ratio {ours_s / ref_s:.2f}x "
        f"(median of {args.rounds}; identical voxels: {same})\n"
    )


if __name__ == "__main__":
    main()
