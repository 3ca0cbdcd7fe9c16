"""The paper's comparison networks (Table 1): VNet, SegResNet, DynUNet, UNETR and SwinUNETR from MONAI.

Each is a plain segmentation network: one input channel (the normalised image crop), one output
channel (lesion logits) at the crop's full resolution, no prompts. Two widths:

``paper``
    The settings MONAI documents for 3D segmentation, sized for the crop: VNet as constructed
    (it has no width parameter); SegResNet as in MONAI's BraTS tutorial (16 initial filters,
    blocks (1, 2, 2, 4)/(1, 1, 1), dropout 0.2); DynUNet with nnU-Net's kernels and strides for an
    isotropic crop (halve while a side stays at least 8 voxels; MONAI's DynUNet tutorial) and
    MONAI's default filters 32·2^i up to 320, no deep supervision; UNETR with its defaults
    (16 features, ViT-B: hidden 768, MLP 3072, 12 heads); SwinUNETR as in MONAI's BTCV tutorial
    (48 features).
``tiny``
    The same architectures with the smallest sensible widths, for tests and CI. VNet has no width
    parameter, so its tiny network is the paper one.

Weights are saved in a small self-describing file (:func:`save_baseline`) that
:func:`load_baseline` rebuilds, and :class:`DensePredictor` runs any such network with the same
calls, working grid, crops and normalisation as :class:`models.predictor.Predictor`, so the
comparison in Table 1 sees exactly the voxels our network sees.
"""

from __future__ import annotations

import contextlib
import importlib.util
import pickle
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.checkpoint import file_sha256, write_torch_file
from models.errors import CheckpointError, ModelError
from models.predictor import Click, CropPredictor, PatientBox, Prediction, average_tiles
from models.transforms import Crop, WorkingGrid

BASELINE_ARCHS: tuple[str, ...] = ("vnet", "segresnet", "dynunet", "unetr", "swinunetr")
BASELINE_WIDTHS: tuple[str, ...] = ("paper", "tiny")
BASELINE_FORMAT = "rtinjury.baseline"
BASELINE_FORMAT_VERSION = 1
PROMPTS_IGNORED_NOTE = "a plain segmentation network takes no prompts; box/clicks/text ignored"
PREVIOUS_IGNORED_NOTE = (
    "a plain segmentation network takes no mask prompt; the previous prediction was ignored"
)
# The transformer networks build their attention blocks with einops (a MONAI optional import that
# otherwise fails only at construction, deep inside MONAI).
_NEEDS_EINOPS = ("unetr", "swinunetr")
_SHOWN_KEYS = 8


@dataclass(frozen=True)
class DenseConfig:
    """What inference code asks of any network's configuration (a subset of ``ModelConfig``)."""

    name: str
    img_size: int
    box_prompt: bool = False
    text_dim: int | None = None


@dataclass(frozen=True)
class _SizeRule:
    """The crop sides an architecture accepts: multiples of ``multiple``, at least ``minimum``."""

    multiple: int
    minimum: int
    why: str


_SIZE_RULES: dict[str, _SizeRule] = {
    "vnet": _SizeRule(16, 32, "it halves the crop 4 times and batch-normalises at least 2³ voxels there"),
    "segresnet": _SizeRule(8, 16, "it halves the crop 3 times and keeps at least 2³ voxels there"),
    "dynunet": _SizeRule(4, 16, "nnU-Net's plan needs at least two halvings (three levels)"),
    "unetr": _SizeRule(16, 32, "its ViT cuts the crop into 16³ patches, at least 2 a side"),
    "swinunetr": _SizeRule(
        32, 64, "it halves the crop 5 times and instance-normalises at least 2³ voxels there"
    ),
}


def check_baseline(arch: str, img_size: int, width: str = "paper") -> None:
    """Refuse an unknown architecture or width, or a crop side the architecture cannot take.

    Raises
    ------
    ModelError
        Naming the known architectures or widths, or the reason the crop side does not fit.
    """
    if arch not in BASELINE_ARCHS:
        raise ModelError(f"unknown baseline network {arch!r}; known: {', '.join(BASELINE_ARCHS)}")
    if width not in BASELINE_WIDTHS:
        raise ModelError(f"unknown baseline width {width!r}; known: {', '.join(BASELINE_WIDTHS)}")
    rule = _SIZE_RULES[arch]
    if img_size < rule.minimum or img_size % rule.multiple:
        raise ModelError(
            f"{arch} needs img_size a multiple of {rule.multiple} and at least {rule.minimum} "
            f"({rule.why}); got {img_size}"
        )


def build_baseline(arch: str, img_size: int = 64, *, width: str = "paper") -> nn.Module:
    """A randomly initialised baseline network for cubic crops of ``img_size`` voxels.

    Parameters
    ----------
    arch
        One of :data:`BASELINE_ARCHS`.
    img_size
        Side of the cubic crop (voxels of the 1 mm working grid).
    width
        ``"paper"`` (MONAI's documented settings) or ``"tiny"`` (tests and CI).

    Returns
    -------
    torch.nn.Module
        Maps (B, 1, S, S, S) images to (B, 1, S, S, S) logits in train and eval mode.

    Raises
    ------
    ModelError
        Unknown architecture or width, a crop side the architecture cannot take, or a missing
        optional dependency.
    """
    check_baseline(arch, img_size, width)
    if arch in _NEEDS_EINOPS and importlib.util.find_spec("einops") is None:
        raise ModelError(f"the {arch} network needs the einops package (pip install einops)")
    return _BUILDERS[arch](img_size, width == "tiny")


def _build_vnet(img_size: int, tiny: bool) -> nn.Module:
    from monai.networks.nets import VNet

    # MONAI's VNet fixes its channels (16 doubling to 256): tiny and paper are the same network.
    return VNet(spatial_dims=3, in_channels=1, out_channels=1)


def _build_segresnet(img_size: int, tiny: bool) -> nn.Module:
    from monai.networks.nets import SegResNet

    # 8 filters is the smallest width its 8 GroupNorm groups allow (and MONAI's default).
    return SegResNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        init_filters=8 if tiny else 16,
        blocks_down=(1, 2, 2, 4),
        blocks_up=(1, 1, 1),
        dropout_prob=0.2,
    )


def dynunet_strides(img_size: int) -> list[int]:
    """nnU-Net's strides for an isotropic crop: halve while a side stays at least 8 voxels and even.

    The first level keeps full resolution (stride 1), as in MONAI's DynUNet tutorial, so 64 gives
    [1, 2, 2, 2, 2] and a 4³ bottleneck.
    """
    strides, side = [1], img_size
    while side >= 8 and side % 2 == 0:
        strides.append(2)
        side //= 2
    return strides


def _build_dynunet(img_size: int, tiny: bool) -> nn.Module:
    from monai.networks.nets import DynUNet

    strides = dynunet_strides(img_size)
    # MONAI's default filters are 32·2^i capped at 320; tiny is a quarter of that.
    base, cap = (8, 80) if tiny else (32, 320)
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=1,
        kernel_size=[3] * len(strides),
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=[min(base * 2**level, cap) for level in range(len(strides))],
        deep_supervision=False,
        res_block=False,
    )


def _build_unetr(img_size: int, tiny: bool) -> nn.Module:
    from monai.networks.nets import UNETR

    if tiny:
        return UNETR(
            in_channels=1,
            out_channels=1,
            img_size=img_size,
            feature_size=8,
            hidden_size=48,
            mlp_dim=192,
            num_heads=3,
        )
    return UNETR(in_channels=1, out_channels=1, img_size=img_size)


def _build_swinunetr(img_size: int, tiny: bool) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    if tiny:
        # 12 features is the smallest SwinUNETR allows (a multiple of 12); heads keep 12 per head.
        return SwinUNETR(in_channels=1, out_channels=1, feature_size=12, num_heads=(1, 2, 4, 8))
    return SwinUNETR(in_channels=1, out_channels=1, feature_size=48)


_BUILDERS: dict[str, Callable[[int, bool], nn.Module]] = {
    "vnet": _build_vnet,
    "segresnet": _build_segresnet,
    "dynunet": _build_dynunet,
    "unetr": _build_unetr,
    "swinunetr": _build_swinunetr,
}


# -- files ---------------------------------------------------------------------------------------


def save_baseline(
    model: nn.Module,
    arch: str,
    img_size: int,
    width: str,
    path: Path,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Write a baseline network's weights and how to rebuild it, atomically.

    ``metadata`` must hold plain values (str, numbers, lists, dicts) so that the file loads with
    ``torch.load(weights_only=True)``.

    Returns
    -------
    str
        The file's SHA-256.
    """
    check_baseline(arch, img_size, width)
    payload = {
        "format": BASELINE_FORMAT,
        "format_version": BASELINE_FORMAT_VERSION,
        "arch": arch,
        "img_size": int(img_size),
        "width": width,
        "model_state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    return write_torch_file(payload, path)


@dataclass
class LoadedBaseline:
    model: nn.Module
    config: DenseConfig
    weights_sha256: str
    metadata: dict[str, Any]
    path: Path

    @property
    def model_id(self) -> str:
        """Short identifier for reports: the architecture and the first 12 hex of the file hash."""
        return f"{self.config.name}@{self.weights_sha256[:12]}"


def is_baseline_file(path: Path) -> bool:
    """Whether ``path`` is a torch file written by :func:`save_baseline` (False for anything else)."""
    try:
        payload = _read(Path(path), mmap=True)
    except CheckpointError:
        return False
    return isinstance(payload, dict) and payload.get("format") == BASELINE_FORMAT


def load_baseline(path: Path) -> LoadedBaseline:
    """Rebuild the network a :func:`save_baseline` file describes and load its weights strictly.

    Raises
    ------
    CheckpointError
        The file is missing, not a baseline file, of another format version, describes a network
        this build cannot make, or its weights do not fit that network (keys named).
    """
    path = Path(path)
    payload = _read(path, mmap=False)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    if fmt != BASELINE_FORMAT:
        raise CheckpointError(
            f"{path} is not a baseline network file (format {fmt!r}, expected {BASELINE_FORMAT!r}); "
            "our promptable network's checkpoints load with models.checkpoint.load_checkpoint"
        )
    version = payload.get("format_version")
    if version != BASELINE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has baseline format version {version!r}; this build reads {BASELINE_FORMAT_VERSION}"
        )
    arch, img_size, width = payload.get("arch"), payload.get("img_size"), payload.get("width")
    try:
        model = build_baseline(str(arch), int(img_size), width=str(width))
    except (ModelError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} describes a network this build cannot make: {exc}") from None
    _load_state(path, model, str(arch), payload.get("model_state_dict"))
    config = DenseConfig(name=str(arch), img_size=int(img_size))
    return LoadedBaseline(model, config, file_sha256(path), dict(payload.get("metadata") or {}), path)


def _read(path: Path, *, mmap: bool) -> Any:
    """The file's content, loaded without running pickled code (tensors and plain values only)."""
    if not path.is_file():
        raise CheckpointError(f"baseline file {path} does not exist or is not a file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path} is not a PyTorch file (torch.save zip format)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path} holds pickled Python objects besides tensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch file ({type(exc).__name__})") from None


def _load_state(path: Path, model: nn.Module, arch: str, state: Any) -> None:
    """Copy ``state`` into ``model`` after checking that keys and shapes match exactly."""
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no state dict ('model_state_dict')")
    expected = model.state_dict()
    unexpected = [str(k) for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    if unexpected or missing:
        raise CheckpointError(
            f"{path} does not fit the {arch} network: {len(unexpected)} unexpected keys "
            f"({_names(unexpected)}), {len(missing)} missing keys ({_names(missing)})"
        )
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or tensor.shape != expected[key].shape:
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise CheckpointError(
                f"{path}: {key} is {shape}, the {arch} network needs {tuple(expected[key].shape)}"
            )
    model.load_state_dict(state, strict=True)


def _names(keys: Iterable[str]) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:_SHOWN_KEYS]) or "none"
    return shown + (f" and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else "")


# -- inference -----------------------------------------------------------------------------------


class DensePredictor(CropPredictor):
    """Same calls as :class:`models.predictor.Predictor` for a plain segmentation network.

    ``set_volume`` runs the network on every crop (that is all there is to run); ``predict``
    averages the tiles' logits on the working grid exactly as ``Predictor`` does and ignores
    prompts, with a note saying so. The model is moved to ``device``; its train/eval mode and
    torch's thread count are restored after each run, so a trainer can validate with its own
    network.
    """

    def __init__(
        self, model: nn.Module, config: DenseConfig, *, device: str = "cpu", threads: int | None = None
    ) -> None:
        try:
            self._device = torch.device(device)
            self.model = model.to(self._device)
        except (RuntimeError, AssertionError) as exc:  # unknown device string, torch without CUDA
            raise ModelError(f"cannot run the network on device {device!r}: {exc}") from exc
        super().__init__()
        self.config = config
        self.device = str(self._device)
        self.threads = threads

    def predict(
        self,
        *,
        box: PatientBox | None = None,
        clicks: Sequence[Click] = (),
        text_features: np.ndarray | None = None,
        previous: Prediction | None = None,
    ) -> Prediction:
        """The crops' logits averaged on the working grid (``OUTSIDE_LOGIT`` where none covers)."""
        state = self._require_volume()
        start = time.perf_counter()
        logits = average_tiles(state.grid, state.crops, state.per_crop)
        notes = _ignored_prompt_notes(box, clicks, text_features, previous)
        elapsed = time.perf_counter() - start
        return Prediction(state.grid, logits, list(state.per_crop), list(state.crops), notes, elapsed)

    def _run_crops(self, grid: WorkingGrid, volume: np.ndarray, crops: list[Crop], pad_value: float) -> None:
        # One crop at a time (a 128³ crop through a paper-width network already takes
        # gigabytes), in eval mode with the thread limit.
        with self._scope():
            super()._run_crops(grid, volume, crops, pad_value)

    def _run_crop(self, crop_volume: np.ndarray) -> np.ndarray:
        """(1, 1, S, S, S) logits of one crop, like Predictor's low-resolution logits."""
        size = self.config.img_size
        output = self.model(torch.from_numpy(crop_volume[None, None]).to(self._device))
        if not isinstance(output, torch.Tensor) or tuple(output.shape) != (1, 1, size, size, size):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ModelError(
                f"the {self.config.name} network returned {shape}; expected (1, 1, {size}, {size}, {size})"
            )
        return np.ascontiguousarray(output.detach().float().cpu().numpy())

    @contextlib.contextmanager
    def _scope(self) -> Iterator[None]:
        """Eval mode, no autograd and the thread limit for one run; the caller's settings after."""
        was_training = self.model.training
        previous_threads = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            self.model.train(was_training)
            if self.threads:
                torch.set_num_threads(previous_threads)


def _ignored_prompt_notes(
    box: PatientBox | None,
    clicks: Sequence[Click],
    text_features: np.ndarray | None,
    previous: Prediction | None,
) -> list[str]:
    notes = []
    if box is not None or len(clicks) > 0 or text_features is not None:
        notes.append(PROMPTS_IGNORED_NOTE)
    if previous is not None:
        notes.append(PREVIOUS_IGNORED_NOTE)
    return notes
