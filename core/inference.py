"""One run's model applied to new images: prediction, every map, and the features for neighbours.

``Predictor`` loads a checkpoint once and applies exactly the preprocessing of evaluation (decode as RGB,
bilinear resize to the model's square input, ImageNet normalisation), so an image of the dataset gets the
prediction and the maps the run stored for it. The "Try an image" page and ``jobs.explain`` use it; no other
page runs the model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from core.cammaps import GRADIENT_METHODS, check_method
from core.data import to_tensor
from core.embed import FEATURE_LAYER, FeatureTap
from core.gradcam import explain_many
from core.images import model_pixels
from core.model import CheckpointError, ModelMeta, SportsVGG, build_model, read_checkpoint
from core.tryout import PICKED, TOP1, calibrated_probs  # TOP1, PICKED: what a map explains


@dataclass
class TryResult:
    """One image's prediction and maps. ``maps[method][TOP1]`` explains the top-1 class, and
    ``maps[method][PICKED]`` the class the caller picked (when one was)."""

    name: str
    pixels: np.ndarray  # uint8 (S, S, 3): what the model saw
    logits: np.ndarray  # float32 (num_classes,)
    probs: np.ndarray  # softmax of logits (temperature 1)
    top_idx: list[int]
    top_prob: list[float]
    picked: Optional[int]
    maps: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    features: Optional[np.ndarray] = None  # penultimate vector, when the model exposes one

    def calibrated(self, temperature: float) -> np.ndarray:
        """Probabilities after temperature scaling (softmax of logits / T)."""
        return calibrated_probs(self.logits, temperature).astype(np.float32)


def load_for_inference(path: str | os.PathLike) -> tuple[SportsVGG, ModelMeta]:
    """``core.model.load_checkpoint`` without the random initialisation the weights then replace: the model
    is built on the meta device and takes the checkpoint's tensors as they are (1.4 s of CPU saved at VGG-19's
    size). The same ``CheckpointError`` when the file is unusable or its weights do not fit."""
    state = read_checkpoint(path)
    meta = ModelMeta.from_dict(state["meta"])
    with torch.device("meta"):
        model = build_model(meta)
    try:
        model.load_state_dict(state["model"], assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model ({exc})") from exc
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise CheckpointError(f"checkpoint {path}: some of the model's tensors are not in it")
    return model.eval(), meta


class Predictor:
    """A run's checkpoint, loaded once; call ``predict`` with decoded RGB images."""

    def __init__(self, checkpoint: str | os.PathLike, *, layer: Optional[str] = None, device: str = "cpu"):
        self.model, self.meta = load_for_inference(checkpoint)
        self.device = torch.device(device)
        self.model.to(self.device)
        self.layer = layer or self.meta.cam_layer

    @property
    def classes(self) -> list[str]:
        return list(self.meta.class_names)

    @property
    def image_size(self) -> int:
        return int(self.meta.image_size)

    def pixels(self, img: Image.Image) -> np.ndarray:
        return model_pixels(img.convert("RGB"), self.image_size)

    def predict(self, images: Sequence[Image.Image], names: Sequence[str], *,
                methods: Sequence[str] = GRADIENT_METHODS, picked: Optional[int] = None, topk: int = 5,
                batch_size: int = 8) -> list[TryResult]:
        """Predict and explain each image: the top-1 class, and ``picked`` when given, for every method."""
        methods = tuple(check_method(m) for m in methods)
        if len(images) != len(names):
            raise ValueError(f"need one name per image, got {len(images)} images and {len(names)} names")
        n_classes = len(self.meta.class_names)
        if picked is not None and not 0 <= picked < n_classes:
            raise ValueError(f"picked class must lie in [0, {n_classes}), got {picked}")
        out: list[TryResult] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            pix = [self.pixels(im) for im in chunk]
            x = torch.stack([to_tensor(p, self.meta.mean, self.meta.std) for p in pix]).to(self.device)

            def targets(logits: torch.Tensor) -> torch.Tensor:
                top1 = logits.argmax(dim=1, keepdim=True)
                if picked is None:
                    return top1
                return torch.cat([top1, torch.full_like(top1, picked)], dim=1)

            # The feature vector (the input of the classifier) comes from the same forward as the maps.
            with FeatureTap(self.model, FEATURE_LAYER) as tap:
                logits, maps = explain_many(self.model, x, targets, methods, layer=self.layer)
                feats = tap.take()
            logits = logits.float().cpu()
            probs = logits.softmax(dim=1).numpy()
            k = min(topk, n_classes)
            for j, p in enumerate(pix):
                order = np.argsort(-probs[j], kind="stable")[:k]
                per = {m: {TOP1: maps[m][j, 0].cpu().numpy()} for m in methods}
                if picked is not None:
                    for m in methods:
                        per[m][PICKED] = maps[m][j, 1].cpu().numpy()
                out.append(TryResult(names[start + j], p, logits[j].numpy(), probs[j], [int(i) for i in order],
                                     [float(probs[j][i]) for i in order], picked, per, feats[j]))
        return out
