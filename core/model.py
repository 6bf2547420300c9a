"""The classifier: VGG-19's convolutional base, a 1x1 conv 512->256 and a new classifier head.

The layout follows the published method: the pre-trained base is kept whole (``features``), a 1x1
convolution reduces its 512 channels to 256, and a small classifier with Dropout maps a globally pooled
256-vector to the classes. The global pool makes any input size from 32 px up valid.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from core.defaults import DEFAULT_CAM_LAYER, MIN_IMAGE_SIZE  # noqa: F401  (the names this module always had)
from core.errors import CheckpointError, WeightsUnavailable  # noqa: F401

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SportsVGG(nn.Module):
    """VGG-19 features -> 1x1 conv (512->256) + ReLU -> global average pool -> Dropout/Linear head."""

    def __init__(self, num_classes: int, hidden: int = 256, dropout: float = 0.5):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        from torchvision.models import vgg19

        self.features = vgg19(weights=None).features  # 37 modules; index 36 is the last max-pool
        self.reduce = nn.Sequential(nn.Conv2d(512, 256, kernel_size=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(256, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in [*self.reduce.modules(), *self.classifier.modules()]:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def base_parameters(self):
        return self.features.parameters()

    def head_parameters(self):
        return [*self.reduce.parameters(), *self.classifier.parameters()]

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """Everything above the convolutional base."""
        return self.classifier(self.pool(self.reduce(feats)))

    def forward(self, x: torch.Tensor, frozen_base: bool = False) -> torch.Tensor:
        if frozen_base:
            # Phase 1: the base is frozen, so build no autograd graph through it.
            with torch.no_grad():
                feats = self.features(x)
            return self.head(feats)
        return self.head(self.features(x))


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode inside the block; afterwards every module's own mode as before (mixed states too)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def resolve_module(model: nn.Module, path: str) -> nn.Module:
    """Return the submodule at a dotted path such as ``features.35``, with a clear error."""
    try:
        return model.get_submodule(path)
    except AttributeError as exc:
        raise ValueError(f"no module at path {path!r} in {type(model).__name__}") from exc


def looks_linear_init_(features: nn.Sequential) -> None:
    """Mirrored ("looks linear") initialisation of a plain ReLU conv stack (Balduzzi et al., 2017, "The
    Shattered Gradients Problem", sec. 5).

    Every conv emits channel pairs (z, -z) and reads its input pairs with weights (V, -V), so that
    V relu(z) - V relu(-z) = V z: at initialisation the 16 ReLU convs of VGG-19 act as one linear map and
    do not collapse different inputs onto nearly the same features, which the usual random initialisation
    of a deep network without BatchNorm does. V is orthogonal, so activations keep their scale.
    """
    pairs_in = False
    for conv in (m for m in features if isinstance(m, nn.Conv2d)):
        out_c, in_c, kh, kw = conv.weight.shape
        if out_c % 2 or (pairs_in and in_c % 2):
            raise ValueError(f"looks-linear init needs even channel counts, got conv {in_c}->{out_c}")
        v = torch.empty(out_c // 2, in_c // 2 if pairs_in else in_c, kh, kw)
        nn.init.orthogonal_(v.view(v.shape[0], -1))
        w = torch.cat([v, -v], dim=1) if pairs_in else v
        with torch.no_grad():
            conv.weight.copy_(torch.cat([w, -w], dim=0))
            conv.bias.zero_()
        pairs_in = True


def load_imagenet_base(model: SportsVGG, weights: str) -> str:
    """Fill ``model.features`` from ``weights`` ('imagenet', 'none' or a file path); return a description."""
    if weights == "none":
        looks_linear_init_(model.features)
        return "none (looks-linear random initialisation)"
    if weights == "imagenet":
        from torchvision.models import VGG19_Weights

        w = VGG19_Weights.IMAGENET1K_V1
        try:
            state = w.get_state_dict(progress=False)
        except Exception as exc:  # network errors come in many types (URLError, OSError, HTTPError...)
            raise WeightsUnavailable(
                "ImageNet weights for VGG-19 are not cached and could not be downloaded "
                f"({type(exc).__name__}: {exc}); use --weights none to train from scratch or "
                "--weights PATH to load a local VGG-19 state dict"
            ) from exc
        desc = "imagenet (torchvision VGG19_Weights.IMAGENET1K_V1)"
    else:
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailable(
                f"--weights {weights}: no such file; use --weights imagenet, --weights none or --weights PATH"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise WeightsUnavailable(f"--weights {weights}: cannot be read as a state dict ({exc})") from exc
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        desc = f"file {path}"
    feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    if not feats:
        raise WeightsUnavailable(f"--weights {weights}: holds no 'features.*' tensors of a VGG-19")
    missing, unexpected = model.features.load_state_dict(feats, strict=False)
    if missing:
        raise WeightsUnavailable(f"--weights {weights}: missing VGG-19 base tensors {missing[:4]}")
    return desc


def imagenet_weights_cached() -> bool:
    """True when torchvision's VGG-19 ImageNet weights already sit in torch's hub cache."""
    from torchvision.models import VGG19_Weights

    fname = os.path.basename(VGG19_Weights.IMAGENET1K_V1.url)
    return (Path(torch.hub.get_dir()) / "checkpoints" / fname).is_file()


@dataclass
class ModelMeta:
    """What a checkpoint says about its model, beyond the weights."""

    class_names: list[str]
    image_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    cam_layer: str = DEFAULT_CAM_LAYER
    hidden: int = 256
    dropout: float = 0.5
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "image_size": int(self.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "cam_layer": self.cam_layer,
            "hidden": self.hidden,
            "dropout": self.dropout,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        return cls(
            class_names=list(d["class_names"]),
            image_size=int(d["image_size"]),
            mean=tuple(d.get("mean", IMAGENET_MEAN)),
            std=tuple(d.get("std", IMAGENET_STD)),
            cam_layer=d.get("cam_layer", DEFAULT_CAM_LAYER),
            hidden=int(d.get("hidden", 256)),
            dropout=float(d.get("dropout", 0.5)),
            extra=dict(d.get("extra", {})),
        )


def build_model(meta: ModelMeta) -> SportsVGG:
    return SportsVGG(len(meta.class_names), hidden=meta.hidden, dropout=meta.dropout)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a temporary file in the same folder, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        torch.save(state, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True``; a clear CheckpointError when it is unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint: {exc}") from exc
    if not isinstance(state, dict) or "model" not in state or "meta" not in state:
        raise CheckpointError(f"checkpoint {path} does not hold 'model' and 'meta' entries")
    return state


def load_checkpoint(path: str | os.PathLike) -> tuple[SportsVGG, ModelMeta]:
    """Return the checkpoint's model in eval mode and its metadata."""
    state = read_checkpoint(path)
    meta = ModelMeta.from_dict(state["meta"])
    model = build_model(meta)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model ({exc})") from exc
    model.eval()
    return model, meta
