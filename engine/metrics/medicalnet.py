"""The 3-D MedicalNet ResNet (Chen, Ma & Zheng 2019, "Med3D"), built here, as a feature extractor for FID.

The architecture follows Tencent MedicalNet's ``models/resnet.py`` exactly, because its weights
only make sense in it: a 7³ stride-2 stem and a stride-2 max-pool, ``layer1`` and ``layer2``
as in a ResNet, but ``layer3`` and ``layer4`` with stride 1 and dilation 2 and 4 (MONAI's
``ResNet`` uses stride 2 there and would give different features from the same weights).
The segmentation head (``conv_seg``) is dropped; the feature of a volume is the spatial mean
of ``layer4``'s output (512 values for ResNet-10/18/34, 2048 for ResNet-50 and deeper).

Weights are never downloaded: the user downloads a MedicalNet file once, e.g.
``resnet_10_23dataset.pth`` or ``resnet_50_23dataset.pth`` from the Tencent MedicalNet release
(https://github.com/Tencent/MedicalNet) or the Hugging Face repositories
``TencentMedicalNet/MedicalNet-Resnet10`` / ``TencentMedicalNet/MedicalNet-Resnet50``, and
passes its path. The depth, block type and shortcut type are read from the file's keys.
The file is read with ``torch.load(weights_only=True)`` (no pickled code runs) and the
``module.`` prefix that ``DataParallel`` left on every key is stripped.

Input normalisation: each volume is z-scored over all its voxels, as MONAI's generative
tutorials do before MedicalNet (MedicalNet itself z-scored within the brain and filled the
background with noise; a deterministic variant is preferable for a metric).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.metrics.errors import EvaluationError

DOWNLOAD_HINT = (
    "download MedicalNet weights once (resnet_10_23dataset.pth or resnet_50_23dataset.pth from "
    "https://github.com/Tencent/MedicalNet or https://huggingface.co/TencentMedicalNet) and pass the file "
    "with --fid-weights"
)

# MedicalNet's depths: block type and blocks per layer.
ARCHITECTURES: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


def _conv3(in_planes: int, out_planes: int, *, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_planes, out_planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


class _ShortcutA(nn.Module):
    """MedicalNet's parameter-free shortcut: subsample, then zero-pad the channels."""

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        pad = torch.zeros(out.shape[0], self.planes - out.shape[1], *out.shape[2:], dtype=out.dtype, device=out.device)
        return torch.cat([out, pad], dim=1)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, *, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = _conv3(inplanes, planes, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, *, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


class MedicalNetResNet(nn.Module):
    """MedicalNet's 3-D ResNet without its segmentation head; ``forward`` returns features.

    Args:
        block: "basic" (ResNet-10/18/34) or "bottleneck" (ResNet-50 and deeper).
        layers: blocks in each of the four layers.
        shortcut_type: "A" (zero padding, MedicalNet's ResNet-18/34) or "B" (1³ convolution).
    """

    def __init__(self, *, block: str, layers: Sequence[int], shortcut_type: str = "B") -> None:
        super().__init__()
        if block not in ("basic", "bottleneck") or shortcut_type not in ("A", "B") or len(layers) != 4:
            raise ValueError("block must be 'basic' or 'bottleneck', shortcut_type 'A' or 'B', and 4 layers")
        self.block_type = block
        self.layers = tuple(int(n) for n in layers)
        self.shortcut_type = shortcut_type
        block_cls = BasicBlock if block == "basic" else Bottleneck
        self.inplanes = 64
        self.conv1 = nn.Conv3d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block_cls, 64, layers[0])
        self.layer2 = self._make_layer(block_cls, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block_cls, 256, layers[2], dilation=2)
        self.layer4 = self._make_layer(block_cls, 512, layers[3], dilation=4)

    @property
    def feature_dim(self) -> int:
        return 512 * (4 if self.block_type == "bottleneck" else 1)

    def _make_layer(self, block_cls, planes: int, blocks: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        out_planes = planes * block_cls.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != out_planes:
            if self.shortcut_type == "A":
                downsample = _ShortcutA(out_planes, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(self.inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm3d(out_planes),
                )
        modules = [block_cls(self.inplanes, planes, stride=stride, dilation=dilation, downsample=downsample)]
        self.inplanes = out_planes
        modules += [
            block_cls(self.inplanes, planes, stride=1, dilation=dilation, downsample=None) for _ in range(1, blocks)
        ]
        return nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, X, Y, Z) volumes → (B, feature_dim) spatially averaged ``layer4`` features."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3, 4))


@dataclass(frozen=True)
class FeatureNetwork:
    """A loaded feature network and where it came from.

    Attributes:
        model: the network in eval mode.
        name: e.g. "MedicalNet ResNet-10 (shortcut B)".
        weights_path: the file the weights were read from.
        sha256: the file's SHA-256, so a report says exactly which weights were used.
    """

    model: MedicalNetResNet
    name: str
    weights_path: Path
    sha256: str


_IGNORED_PREFIXES = ("conv_seg.", "fc.")


def _architecture_from_keys(state: dict[str, torch.Tensor], name: str) -> tuple[str, tuple[int, ...], str]:
    if "conv1.weight" not in state:
        raise EvaluationError(
            f"{name} is not a MedicalNet ResNet weights file (it has no 'conv1.weight'); {DOWNLOAD_HINT}"
        )
    conv1 = tuple(state["conv1.weight"].shape)
    if conv1 != (64, 1, 7, 7, 7):
        raise EvaluationError(
            f"{name} is not a 3-D single-channel MedicalNet ResNet (its first convolution is "
            f"{'x'.join(str(n) for n in conv1)}, expected 64x1x7x7x7); {DOWNLOAD_HINT}"
        )
    layers = []
    for i in range(1, 5):
        blocks = {int(m.group(1)) for k in state if (m := re.match(rf"layer{i}\.(\d+)\.", k))}
        if not blocks:
            raise EvaluationError(f"{name} has no layer{i}; it is not a MedicalNet ResNet. {DOWNLOAD_HINT}")
        layers.append(max(blocks) + 1)
    block = "bottleneck" if "layer1.0.conv3.weight" in state else "basic"
    shortcut = "B" if any(k.startswith("layer2.0.downsample.") for k in state) else "A"
    return block, tuple(layers), shortcut


def load_medicalnet(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> FeatureNetwork:
    """Build MedicalNet's ResNet and load a user-downloaded weights file into it.

    Args:
        path: a MedicalNet ``.pth`` file (a dict with "state_dict", or a bare state dict).
        device: where to put the network.

    Returns:
        The network in eval mode, its description and the file's SHA-256.

    Raises:
        EvaluationError: the file is missing, unreadable, not a MedicalNet 3-D ResNet, or its
            tensors do not fit the architecture (naming the keys).
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"FID weights file {path} does not exist; {DOWNLOAD_HINT}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        reason = " ".join(str(exc).split())[:200]
        raise EvaluationError(
            f"{path.name} cannot be read as PyTorch weights ({reason}); it must be a MedicalNet .pth file "
            f"(files that need to run pickled code are refused). {DOWNLOAD_HINT}"
        ) from exc
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise EvaluationError(f"{path.name} holds no state dict of tensors; {DOWNLOAD_HINT}")
    # DataParallel (how MedicalNet was trained) prefixes every key with "module.".
    state = {re.sub(r"^module\.", "", k): v for k, v in loaded.items()}
    state = {k: v for k, v in state.items() if not k.startswith(_IGNORED_PREFIXES)}
    block, layers, shortcut = _architecture_from_keys(state, path.name)
    model = MedicalNetResNet(block=block, layers=layers, shortcut_type=shortcut)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                parts.append(f"{label}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}")
        raise EvaluationError(f"{path.name} does not fit MedicalNet's ResNet ({'; '.join(parts)}); {DOWNLOAD_HINT}")
    model.load_state_dict(state)
    model.eval().to(device)
    depth = next((d for d, arch in ARCHITECTURES.items() if arch == (block, layers)), None)
    label = f"ResNet-{depth}" if depth else f"ResNet ({block} blocks {list(layers)})"
    return FeatureNetwork(
        model=model,
        name=f"MedicalNet {label} (shortcut {shortcut}), features = spatial mean of layer4",
        weights_path=path.resolve(),
        sha256=_sha256(path),
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def zscore(volume: np.ndarray) -> np.ndarray:
    """Whole-volume z-score (MONAI tutorials' MedicalNet input normalisation); constant → zeros."""
    volume = np.asarray(volume, dtype=np.float32)
    std = float(volume.std())
    return (volume - volume.mean()) / std if std > 0 else np.zeros_like(volume)


@torch.no_grad()
def extract_features(
    network: FeatureNetwork,
    volumes: Sequence[np.ndarray],
    *,
    batch_size: int = 2,
    precision: str = "fp32",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(N, feature_dim) float64 features, ``batch_size`` volumes at a time.

    Args:
        network: from :func:`load_medicalnet`.
        volumes: 3-D volumes of one shape (any intensity scale: each is z-scored).
        batch_size: volumes per forward pass (memory grows linearly with it).
        precision: ``"fp32"`` or ``"bf16"`` (autocast; the features are returned in float64 either way).
        progress: called as ``progress(done, total)``.
    """
    from engine.precision import autocast

    device = next(network.model.parameters()).device
    out = []
    for start in range(0, len(volumes), batch_size):
        batch = np.stack([zscore(v) for v in volumes[start : start + batch_size]])[:, None]
        with autocast(device, precision):
            features = network.model(torch.from_numpy(batch).to(device))
        out.append(features.double().cpu().numpy())
        if progress is not None:
            progress(min(start + batch_size, len(volumes)), len(volumes))
    return np.concatenate(out)
