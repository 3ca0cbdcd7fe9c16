"""DICOM Spatial Registration: write → read round trips, the other writers' convention, refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, SpatialRegistrationStorage
from pydicom.valuerep import format_number_as_ds

from models.synth import write_synthetic_patients
from tests.factories import SeriesSpec, axial_positions, read_back, uid, write_series
from worker.errors import BrokenReferenceError, SpatialRegistrationError
from worker.stages.assemble.case import assemble_cases
from worker.stages.read.files import read_header
from worker.stages.register.spatial_registration import (
    DeformationOmittedWarning,
    SeriesReference,
    read_spatial_registration,
    write_spatial_registration,
)
from worker.stages.register.sro import SpatialRegistration

VALIDATE = Path(__file__).resolve().parents[5] / "shared" / "tools" / "dicom-validate.sh"
TOLERANCE_MM = 1e-4
#: 24 points spread over a head-and-neck-sized box (mm), where round-off would show.
POINTS = np.random.default_rng(7).uniform([-150, -150, -250], [150, 150, 100], size=(24, 3))


@dataclass
class Pair:
    """A follow-up (fixed) and a planning (moving) series in different frames and studies."""

    fixed: SeriesReference
    moving: SeriesReference
    source: Dataset
    fixed_dir: Path
    moving_dir: Path


def _series(folder: Path, name: str) -> tuple[SeriesReference, Dataset]:
    spec = SeriesSpec(
        positions=axial_positions(3),
        frame_of_reference_uid=uid(name, "for"),
        series_instance_uid=uid(name, "series"),
        study_instance_uid=uid(name, "study"),
        name=name,
    )
    headers = [read_header(p) for p in write_series(spec, folder)]
    return SeriesReference.from_datasets(headers), headers[0]


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    fixed, source = _series(tmp_path / "followup", "followup")
    moving, _ = _series(tmp_path / "planning", "planning")
    return Pair(fixed, moving, source, tmp_path / "followup", tmp_path / "planning")


def _write(pair: Pair, transform: sitk.Transform, path: Path, *, swap: bool = False) -> Path:
    fixed, moving = (pair.moving, pair.fixed) if swap else (pair.fixed, pair.moving)
    return write_spatial_registration(
        transform, fixed=fixed, moving=moving, source=pair.source, path=path, uid_seed="test"
    )


def _mapped(transform: sitk.Transform, points: np.ndarray = POINTS) -> np.ndarray:
    return np.array([transform.TransformPoint([float(v) for v in p]) for p in points])


def _max_error(a: sitk.Transform, b: sitk.Transform) -> float:
    return float(np.max(np.linalg.norm(_mapped(a) - _mapped(b), axis=1)))


def _euler(angles_deg: Sequence[float], shift: Sequence[float], center: Sequence[float]) -> sitk.Transform:
    angles = np.radians(angles_deg)
    return sitk.Euler3DTransform(list(center), *map(float, angles), list(shift))


def _versor(axis: Sequence[float], degrees: float, shift: Sequence[float]) -> sitk.Transform:
    versor = sitk.VersorRigid3DTransform()
    versor.SetCenter((5.0, -20.0, 30.0))
    versor.SetRotation(list(axis), float(np.radians(degrees)))
    versor.SetTranslation(list(shift))
    return versor


def _affine() -> sitk.Transform:
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([1.04, 0.05, -0.02, -0.03, 0.97, 0.06, 0.01, -0.04, 1.02])
    affine.SetTranslation((-35.0, 12.5, 60.0))
    affine.SetCenter((10.0, 10.0, -40.0))
    return affine


def _linear_composite() -> sitk.Transform:
    return sitk.CompositeTransform(
        [_euler((8, -5, 12), (0, 0, 0), (0, 0, 0)), sitk.TranslationTransform(3, (30, -20, 10))]
    )


TRANSFORMS: dict[str, Callable[[], sitk.Transform]] = {
    "euler-20deg-80mm": lambda: _euler((20, -20, 20), (80, -80, 80), (12, -30, 150)),
    "euler-small": lambda: _euler((1.5, -0.7, 3.2), (4.0, -7.5, 11.0), (0, 0, -20)),
    "versor-18deg": lambda: _versor((0.3, -0.5, 0.8), 18.0, (-60.0, 25.0, -75.0)),
    "translation": lambda: sitk.TranslationTransform(3, (-80.0, 45.5, 12.25)),
    "affine": _affine,
    "composite-of-linear": _linear_composite,
}
RIGID = {"euler-20deg-80mm", "euler-small", "versor-18deg", "translation", "composite-of-linear"}


# Round trips -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TRANSFORMS)
def test_round_trip_gives_the_same_mapping(pair: Pair, tmp_path: Path, name: str) -> None:
    transform = TRANSFORMS[name]()
    path = _write(pair, transform, tmp_path / "reg.dcm")
    read = read_spatial_registration(
        path, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    )
    assert _max_error(read, transform) < TOLERANCE_MM
    assert read.GetName() == ("Euler3DTransform" if name in RIGID else "AffineTransform")


@pytest.mark.parametrize("name", ["euler-20deg-80mm", "versor-18deg", "affine"])
def test_frames_swapped_read_back_as_the_inverse(pair: Pair, tmp_path: Path, name: str) -> None:
    # Written as planning → follow-up, read as follow-up → planning: the inverse mapping.
    transform = TRANSFORMS[name]()
    path = _write(pair, transform, tmp_path / "reg.dcm", swap=True)
    read = read_spatial_registration(
        path, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    )
    assert _max_error(read, transform.GetInverse()) < TOLERANCE_MM
    back = read_spatial_registration(
        path, pair.moving.frame_of_reference_uid, pair.fixed.frame_of_reference_uid
    )
    assert _max_error(back, transform) < TOLERANCE_MM


def test_written_object_has_complete_modules(pair: Pair, tmp_path: Path) -> None:
    created = datetime(2024, 5, 6, 7, 8, 9)
    path = write_spatial_registration(
        TRANSFORMS["euler-20deg-80mm"](),
        fixed=pair.fixed,
        moving=pair.moving,
        source=pair.source,
        path=tmp_path,
        created=created,
    )
    ds = read_back(path)
    assert path.parent == tmp_path and path.name == f"REG_{ds.SOPInstanceUID}.dcm"
    assert ds.SOPClassUID == SpatialRegistrationStorage and ds.Modality == "REG"
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert (ds.ContentDate, ds.ContentTime) == ("20240506", "070809")
    assert ds.ContentLabel == "RTINJURY_REG" and ds.InstanceNumber == 1
    assert "AI" in ds.ContentDescription and "not reviewed" in ds.ContentDescription
    assert ds.ContentCreatorName == "" and ds.Manufacturer == "rtinjury"
    assert ds.SeriesDescription and ds.SeriesNumber == 9901
    for keyword in (
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
    ):
        assert ds[keyword].value == pair.source[keyword].value
    # The registered frame is the planning CT's; the follow-up's item carries the matrix.
    assert ds.FrameOfReferenceUID == pair.moving.frame_of_reference_uid
    fixed_item, moving_item = ds.RegistrationSequence
    assert fixed_item.FrameOfReferenceUID == pair.fixed.frame_of_reference_uid
    assert moving_item.FrameOfReferenceUID == pair.moving.frame_of_reference_uid
    identity = moving_item.MatrixRegistrationSequence[0].MatrixSequence[0]
    assert np.array_equal(np.array(identity.FrameOfReferenceTransformationMatrix, float), np.eye(4).ravel())
    matrix = fixed_item.MatrixRegistrationSequence[0].MatrixSequence[0]
    assert matrix.FrameOfReferenceTransformationMatrixType == "RIGID"
    assert all(len(str(v)) <= 16 for v in matrix.FrameOfReferenceTransformationMatrix)
    assert fixed_item.MatrixRegistrationSequence[0].RegistrationTypeCodeSequence[0].CodeValue == "125024"
    assert {i.ReferencedSOPInstanceUID for i in fixed_item.ReferencedImageSequence} == {
        i.sop_instance_uid for i in pair.fixed.instances
    }


def test_series_of_other_studies_are_referenced_by_study(pair: Pair, tmp_path: Path) -> None:
    ds = read_back(_write(pair, TRANSFORMS["translation"](), tmp_path / "reg.dcm"))
    (own,) = ds.ReferencedSeriesSequence
    assert own.SeriesInstanceUID == pair.fixed.series_instance_uid
    assert len(own.ReferencedInstanceSequence) == len(pair.fixed.instances)
    (other,) = ds.StudiesContainingOtherReferencedInstancesSequence
    assert other.StudyInstanceUID == pair.moving.study_instance_uid
    assert other.ReferencedSeriesSequence[0].SeriesInstanceUID == pair.moving.series_instance_uid


def test_source_attributes_are_copied_as_they_are(pair: Pair, tmp_path: Path) -> None:
    source = pair.source
    source.SpecificCharacterSet = "ISO_IR 192"
    source.PatientName = "Müller^Jürgen"
    del source.PatientBirthDate, source.AccessionNumber
    ds = read_back(_write(pair, TRANSFORMS["translation"](), tmp_path / "reg.dcm"))
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert str(ds.PatientName) == "Müller^Jürgen"
    # Type 2 attributes the source lacks are present and empty, never invented.
    assert ds["PatientBirthDate"].is_empty and ds["AccessionNumber"].is_empty


def test_uid_seed_makes_uids_deterministic(pair: Pair, tmp_path: Path) -> None:
    transform = TRANSFORMS["translation"]()
    first, second = (read_back(_write(pair, transform, tmp_path / f"{k}.dcm")) for k in "ab")
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (
        second.SeriesInstanceUID,
        second.SOPInstanceUID,
    )
    other = read_back(
        write_spatial_registration(
            transform, fixed=pair.fixed, moving=pair.moving, source=pair.source, path=tmp_path / "c.dcm"
        )
    )
    assert other.SOPInstanceUID != first.SOPInstanceUID


def test_deformable_transform_writes_its_rigid_part_and_says_so(pair: Pair, tmp_path: Path) -> None:
    rigid = TRANSFORMS["euler-small"]()
    field = sitk.Image([8, 8, 8], sitk.sitkVectorFloat64, 3)
    field.SetOrigin((-200.0, -200.0, -300.0))
    field.SetSpacing((60.0, 60.0, 60.0))
    field += 1.5  # a uniform 1.5 mm displacement the REG cannot hold
    deformable = sitk.CompositeTransform([rigid, sitk.DisplacementFieldTransform(field)])
    with pytest.warns(DeformationOmittedWarning, match="DisplacementFieldTransform"):
        path = _write(pair, deformable, tmp_path / "reg.dcm")
    ds = read_back(path)
    comment = ds.RegistrationSequence[0].MatrixRegistrationSequence[0].FrameOfReferenceTransformationComment
    assert "rigid/affine part only" in comment
    read = read_spatial_registration(
        path, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    )
    assert _max_error(read, rigid) < TOLERANCE_MM


def test_linear_transform_writes_without_warning(pair: Pair, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = _write(pair, TRANSFORMS["affine"](), tmp_path / "reg.dcm")
    assert "FrameOfReferenceTransformationComment" not in read_back(path).RegistrationSequence[0]


# Objects written by others ------------------------------------------------------------------------


def _dicom_matrix(transform: sitk.Transform) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3] = np.array(transform.GetMatrix()).reshape(3, 3)
    center, translation = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    matrix[:3, 3] = translation + center - matrix[:3, :3] @ center
    return matrix


def _matrix_item(matrix: np.ndarray | Sequence[object], matrix_type: str | None) -> Dataset:
    item = Dataset()
    values = np.asarray(matrix).ravel() if isinstance(matrix, np.ndarray) else matrix
    item.FrameOfReferenceTransformationMatrix = [
        format_number_as_ds(float(v)) if isinstance(v, float | np.floating) else v for v in values
    ]
    if matrix_type is not None:
        item.FrameOfReferenceTransformationMatrixType = matrix_type
    return item


def _hand_made_reg(
    path: Path,
    registered_frame: str,
    items: Sequence[tuple[str, Sequence[Dataset]]],
    sop_class: str = SpatialRegistrationStorage,
) -> Path:
    """A minimal REG written with pydicom alone: one (frame, matrix items) per registration."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid(path.name, "sop")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid(path.name, "sop")
    ds.Modality, ds.FrameOfReferenceUID = "REG", registered_frame
    ds.RegistrationSequence = DicomSequence()
    for frame, matrices in items:
        registration = Dataset()
        registration.MatrixSequence = DicomSequence(list(matrices))
        item = Dataset()
        item.FrameOfReferenceUID = frame
        item.MatrixRegistrationSequence = DicomSequence([registration])
        ds.RegistrationSequence.append(item)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_reg_registered_to_the_fixed_frame_reads_correctly(pair: Pair, tmp_path: Path) -> None:
    # plastimatch's and SlicerRT's convention: the follow-up frame is the registered frame and
    # the planning item carries the inverse (planning → follow-up) matrix.
    transform = TRANSFORMS["euler-20deg-80mm"]()
    fixed_frame, moving_frame = pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    inverse = np.linalg.inv(_dicom_matrix(transform))
    path = _hand_made_reg(
        tmp_path / "reg.dcm",
        fixed_frame,
        [(fixed_frame, [_matrix_item(np.eye(4), "RIGID")]), (moving_frame, [_matrix_item(inverse, "RIGID")])],
    )
    assert _max_error(read_spatial_registration(path, fixed_frame, moving_frame), transform) < TOLERANCE_MM


def test_registered_frame_needs_no_item(pair: Pair, tmp_path: Path) -> None:
    transform = TRANSFORMS["affine"]()
    fixed_frame, moving_frame = pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    path = _hand_made_reg(
        tmp_path / "reg.dcm",
        moving_frame,
        [(fixed_frame, [_matrix_item(_dicom_matrix(transform), "AFFINE")])],
    )
    assert _max_error(read_spatial_registration(path, fixed_frame, moving_frame), transform) < TOLERANCE_MM


def test_matrix_sequence_applies_its_first_item_first(pair: Pair, tmp_path: Path) -> None:
    # Equation C.20.2-2: A = M2 · M1 · B. Rotation first, then translation, differs from the
    # other order, so a reader that multiplies the wrong way round fails here.
    rotation = _dicom_matrix(_euler((15, -10, 20), (0, 0, 0), (0, 0, 0)))
    translation = np.eye(4)
    translation[:3, 3] = (40.0, -25.0, 60.0)
    fixed_frame, moving_frame = pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    path = _hand_made_reg(
        tmp_path / "reg.dcm",
        moving_frame,
        [(fixed_frame, [_matrix_item(rotation, "RIGID"), _matrix_item(translation, "RIGID")])],
    )
    read = read_spatial_registration(path, fixed_frame, moving_frame)
    expected = POINTS @ rotation[:3, :3].T + translation[:3, 3]
    assert np.max(np.linalg.norm(_mapped(read) - expected, axis=1)) < TOLERANCE_MM
    assert read.GetName() == "Euler3DTransform"


def test_missing_matrix_type_reads_as_affine(pair: Pair, tmp_path: Path) -> None:
    transform = TRANSFORMS["euler-small"]()
    fixed_frame, moving_frame = pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    path = _hand_made_reg(
        tmp_path / "reg.dcm", moving_frame, [(fixed_frame, [_matrix_item(_dicom_matrix(transform), None)])]
    )
    read = read_spatial_registration(path, fixed_frame, moving_frame)
    assert read.GetName() == "AffineTransform" and _max_error(read, transform) < TOLERANCE_MM


# Refusals when reading -------------------------------------------------------------------------

SCALED = np.diag([1.1, 1.0, 1.0, 1.0])
NON_AFFINE = np.eye(4)
NON_AFFINE[3] = (0.0, 0.001, 0.0, 1.0)
MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])
SINGULAR = np.diag([1.0, 1.0, 0.0, 1.0])


@pytest.mark.parametrize(
    ("matrix", "matrix_type", "message"),
    [
        (NON_AFFINE, "AFFINE", "not affine"),
        (list(np.eye(4).ravel()[:15]), "AFFINE", "16 values"),
        (SCALED, "RIGID", "RIGID but the 3×3 part is not a rotation"),
        (MIRROR, "RIGID", "mirrors space"),
        (SINGULAR, "AFFINE", "singular"),
        (np.eye(4), "PERSPECTIVE", "not RIGID, RIGID_SCALE or AFFINE"),
    ],
    ids=["non-affine", "length-15", "rigid-not-orthonormal", "mirror", "singular", "unknown-type"],
)
def test_unusable_matrices_are_refused(
    pair: Pair, tmp_path: Path, matrix: np.ndarray | list[float], matrix_type: str, message: str
) -> None:
    fixed_frame, moving_frame = pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    path = _hand_made_reg(
        tmp_path / "reg.dcm", moving_frame, [(fixed_frame, [_matrix_item(matrix, matrix_type)])]
    )
    with pytest.raises(SpatialRegistrationError, match=message) as caught:
        read_spatial_registration(path, fixed_frame, moving_frame)
    assert "FrameOfReferenceTransformationMatrix" in str(caught.value)


def test_scaled_matrix_is_fine_when_labelled_affine(pair: Pair, tmp_path: Path) -> None:
    fixed_frame, moving_frame = pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    path = _hand_made_reg(
        tmp_path / "reg.dcm", moving_frame, [(fixed_frame, [_matrix_item(SCALED, "AFFINE")])]
    )
    read = read_spatial_registration(path, fixed_frame, moving_frame)
    assert np.allclose(_mapped(read), POINTS * [1.1, 1.0, 1.0])


def test_reg_without_the_planning_frame_is_a_broken_reference(pair: Pair, tmp_path: Path) -> None:
    fixed_frame = pair.fixed.frame_of_reference_uid
    path = _hand_made_reg(
        tmp_path / "reg.dcm", uid("atlas"), [(fixed_frame, [_matrix_item(np.eye(4), "RIGID")])]
    )
    with pytest.raises(BrokenReferenceError, match=r"moving \(planning\) frame of reference") as caught:
        read_spatial_registration(path, fixed_frame, pair.moving.frame_of_reference_uid)
    assert "fixed" not in str(caught.value)


def test_reg_linking_other_frames_is_a_broken_reference(pair: Pair, tmp_path: Path) -> None:
    path = _write(pair, TRANSFORMS["translation"](), tmp_path / "reg.dcm")
    with pytest.raises(BrokenReferenceError, match=r"fixed \(follow-up\) and moving \(planning\)") as caught:
        read_spatial_registration(path, uid("other", 1), uid("other", 2))
    assert "links 2 other frame(s)" in str(caught.value)


def test_other_sop_class_is_refused(pair: Pair) -> None:
    image = next(pair.fixed_dir.iterdir())
    with pytest.raises(SpatialRegistrationError, match="not Spatial Registration Storage"):
        read_spatial_registration(
            image, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
        )


def test_deformable_registration_is_refused(pair: Pair, tmp_path: Path) -> None:
    path = _hand_made_reg(tmp_path / "dreg.dcm", uid("x"), [], sop_class="1.2.840.10008.5.1.4.1.1.66.3")
    with pytest.raises(
        SpatialRegistrationError, match="Deformable Spatial Registration objects are not supported"
    ):
        read_spatial_registration(path, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid)


def test_empty_registration_sequence_is_refused(pair: Pair, tmp_path: Path) -> None:
    path = _hand_made_reg(tmp_path / "reg.dcm", pair.moving.frame_of_reference_uid, [])
    with pytest.raises(SpatialRegistrationError, match="RegistrationSequence is missing or empty"):
        read_spatial_registration(path, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid)


# Refusals when writing -------------------------------------------------------------------------


def test_series_sharing_a_frame_need_no_reg(pair: Pair, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="FrameOfReferenceUID: the fixed and moving series share"):
        write_spatial_registration(
            sitk.Euler3DTransform(),
            fixed=pair.fixed,
            moving=pair.fixed,
            source=pair.source,
            path=tmp_path / "r.dcm",
        )


@pytest.mark.parametrize(
    ("transform", "message"),
    [
        (sitk.DisplacementFieldTransform(3), "no rigid or affine component"),
        (sitk.Euler2DTransform(), "3D transform is required"),
        (sitk.ScaleTransform(3, (-1.0, 1.0, 1.0)), "mirrors space"),
    ],
    ids=["displacement-only", "2d", "mirror"],
)
def test_transforms_a_reg_cannot_hold_are_refused(
    pair: Pair, tmp_path: Path, transform: sitk.Transform, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        _write(pair, transform, tmp_path / "reg.dcm")
    assert not (tmp_path / "reg.dcm").exists()


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"content_label": "rtinjury reg"}, "ContentLabel"),
        ({"content_description": "x" * 65}, "ContentDescription"),
        ({"instance_number": 0}, "InstanceNumber"),
        ({"sop_instance_uid": "not-a-uid"}, "SOPInstanceUID"),
    ],
)
def test_constructor_names_the_attribute_at_fault(
    pair: Pair, keywords: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"series_instance_uid": uid("s"), "sop_instance_uid": uid("i")} | keywords
    with pytest.raises(ValueError, match=message):
        SpatialRegistration(pair.source, pair.fixed, pair.moving, np.eye(4), **arguments)


def test_source_without_study_uid_is_refused(pair: Pair, tmp_path: Path) -> None:
    del pair.source.StudyInstanceUID
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        _write(pair, TRANSFORMS["translation"](), tmp_path / "reg.dcm")


def test_series_reference_refuses_mixed_series(pair: Pair) -> None:
    headers = [read_header(p) for p in sorted(pair.fixed_dir.iterdir())]
    headers[1].SeriesInstanceUID = uid("another series")
    with pytest.raises(ValueError, match="SeriesInstanceUID"):
        SeriesReference.from_datasets(headers)


# Standard validation and other tools -----------------------------------------------------------


@pytest.mark.tools
def test_written_reg_passes_dciodvfy(pair: Pair, tmp_path: Path) -> None:
    if not VALIDATE.is_file() or shutil.which("dciodvfy") is None:
        pytest.fail(
            "dicom-validate.sh or dciodvfy missing (../shared/tools/install-dicom-tools.sh)", pytrace=False
        )
    rigid = _write(pair, TRANSFORMS["euler-20deg-80mm"](), tmp_path / "rigid.dcm")
    affine = _write(pair, TRANSFORMS["affine"](), tmp_path / "affine.dcm")
    result = subprocess.run(
        [str(VALIDATE), "-v", str(rigid), str(affine)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert len(lines) == 2 and all(
        line.startswith("PASS") and "iod=SpatialRegistration" in line for line in lines
    )
    assert "errors=0" in lines[0] and "errors=0" in lines[1]


@pytest.mark.tools
def test_plastimatch_reg_reads_back_as_its_transform(pair: Pair, tmp_path: Path) -> None:
    # plastimatch 1.9 exports a REG (xf-convert --output-dicom) but cannot read one back, so the
    # cross-check runs one way: its object, registered to the fixed frame, through our reader.
    if shutil.which("plastimatch") is None:
        pytest.fail("plastimatch is not installed: run ../shared/tools/install-dicom-tools.sh", pytrace=False)
    transform = TRANSFORMS["euler-20deg-80mm"]()
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(transform.GetMatrix())
    affine.SetTranslation(transform.GetTranslation())
    affine.SetCenter(transform.GetCenter())
    sitk.WriteTransform(affine, str(tmp_path / "xf.tfm"))  # plastimatch 1.9 cannot load Euler3D files
    command = ["plastimatch", "xf-convert", "--input", str(tmp_path / "xf.tfm")]
    command += ["--output-dicom", str(tmp_path / "sro"), "--fixed-rcs", str(pair.fixed_dir)]
    command += ["--moving-rcs", str(pair.moving_dir)]
    subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    (path,) = (tmp_path / "sro").glob("*.dcm")
    assert pydicom.dcmread(path).FrameOfReferenceUID == pair.fixed.frame_of_reference_uid
    read = read_spatial_registration(
        path, pair.fixed.frame_of_reference_uid, pair.moving.frame_of_reference_uid
    )
    # plastimatch prints 6 decimals ("%f"): 1e-6 per entry, about 1e-4 mm at 150 mm.
    assert _max_error(read, transform) < 1e-3


# Through the assembler ----------------------------------------------------------------------------


def _true_rigid(rigid: dict[str, list[float]]) -> sitk.Transform:
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(np.asarray(rigid["matrix"], float).ravel().tolist())
    transform.SetTranslation(rigid["translation"])
    transform.SetCenter(rigid["center"])
    return transform


def _headers(folder: Path) -> list[Dataset]:
    return [read_header(p) for p in sorted(folder.iterdir())]


def test_assembled_case_holds_the_reg_and_it_gives_the_true_rigid_mapping(tmp_path: Path) -> None:
    (folder,) = write_synthetic_patients(tmp_path / "synth", task="orn", size="small")
    truth = json.loads((folder / "case.json").read_text())
    followup = _headers(folder / truth["followups"][0]["image_dir"])
    planning = _headers(folder / truth["planning"]["ct_dir"])
    true_rigid = _true_rigid(truth["true_transform"]["rigid"])
    (folder / "reg").mkdir()
    write_spatial_registration(
        true_rigid,
        fixed=SeriesReference.from_datasets(followup),
        moving=SeriesReference.from_datasets(planning),
        source=followup[0],
        path=folder / "reg",
    )
    case = assemble_cases(folder, tmp_path / "work").cases[0]
    assert case.followup.uid == truth["followups"][0]["series_instance_uid"]
    (reg,) = case.reg
    read = read_spatial_registration(
        reg.first.path,
        case.followup.first.frame_of_reference_uid,
        case.planning_ct.first.frame_of_reference_uid,
    )
    centre = np.asarray(truth["true_transform"]["rigid"]["center"], float)
    points = centre + np.random.default_rng(3).uniform(-80, 80, size=(24, 3))
    true_points = (points - centre) @ np.asarray(truth["true_transform"]["rigid"]["matrix"]).T
    true_points += centre + np.asarray(truth["true_transform"]["rigid"]["translation"])
    assert np.max(np.linalg.norm(_mapped(read, points) - true_points, axis=1)) < TOLERANCE_MM
