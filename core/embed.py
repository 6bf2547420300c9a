"""The model's own feature vector of an image: SportsVGG's pooled 256-d vector before the classifier.

``SportsVGG.head`` is ``classifier(pool(reduce(features(x))))``: the vector kept here is the output of
``pool`` (global average of the 1x1-conv + ReLU maps), flattened to (N, 256), the input of the classifier's
Dropout/Linear layers. It is what the classifier sees, so images the model confuses lie close together.

Three ways in, all one forward per batch:
- :func:`features` for a batch tensor (eval mode, no grad, batched);
- :func:`logits_and_features` when the logits are wanted too (evaluation, prediction);
- :class:`FeatureTap`, a forward hook on ``pool``, to collect the vectors of a forward that something
  else runs (the Grad-CAM pass of ``core.gradcam.explain``), without a second forward.
Stored as float16 bytes with ``encode_vector`` / ``decode_vectors`` (re-exported from ``core.neighbours``,
which needs no torch).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from core.dist import DistEnv
from core.engine import Skipped
from core.neighbours import decode_vector, decode_vectors, encode_vector, encode_vectors  # noqa: F401

__all__ = ["FEATURE_LAYER", "EmbedBatch", "FeatureTap", "decode_vector", "decode_vectors", "embed_batches",
           "encode_vector", "encode_vectors", "feature_dim", "features", "logits_and_features", "with_vectors"]

# The module whose output is the feature vector, as a dotted path in SportsVGG.
FEATURE_LAYER = "pool"


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    names = ("features", "reduce", "pool", "classifier")
    missing = [n for n in names if not isinstance(getattr(model, n, None), nn.Module)]
    if missing:
        raise ValueError(f"{type(model).__name__} has no {', '.join(missing)} module(s); expected a SportsVGG "
                         "layout (features -> reduce -> pool -> classifier)")
    return tuple(getattr(model, n) for n in names)  # type: ignore[return-value]


def feature_dim(model: nn.Module) -> int:
    """Length of the feature vector: the 1x1 conv's output channels (256 in SportsVGG)."""
    reduce = _parts(model)[1]
    convs = [m for m in reduce.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__}.reduce holds no Conv2d to size the feature vector")
    return int(convs[-1].out_channels)


def _check_images(images) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a float tensor (N, 3, H, W), got {got}")


@contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode inside the block; every module's own mode restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def logits_and_features(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: (logits (N, C), features (N, D)) with the logits equal to ``model(images)``.

    Runs in the caller's mode and grad context (wrap it in ``torch.inference_mode()`` and ``model.eval()``
    to predict); the features share the forward's dtype (float16 under autocast).
    """
    _check_images(images)
    base, reduce, pool, classifier = _parts(model)
    pooled = pool(reduce(base(images)))  # (N, D, 1, 1); the classifier's Flatten takes it as it is
    return classifier(pooled), pooled.flatten(1)


def features(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64,
             device: Optional[torch.device] = None, amp: bool = False) -> np.ndarray:
    """Feature vectors of preprocessed images (N, 3, H, W): float32 numpy (N, D).

    Batched, eval mode (each module's mode restored afterwards), inference mode; ``device`` defaults to
    the model's; ``amp`` runs the forward in float16 autocast on CUDA. ``images`` is not modified.
    """
    _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    dim = feature_dim(model)
    if images.shape[0] == 0:
        return np.empty((0, dim), dtype=np.float32)
    device = device or next(model.parameters()).device
    out = np.empty((images.shape[0], dim), dtype=np.float32)
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    with _eval_mode(model), torch.inference_mode(), autocast:
        for s in range(0, images.shape[0], batch_size):
            _, f = logits_and_features(model, images[s:s + batch_size].to(device))
            out[s:s + batch_size] = f.float().cpu().numpy()
    return out


class FeatureTap:
    """Owns a forward hook on the model's ``pool`` that keeps each forward's feature vectors.

    ``vectors`` holds the last forward's (N, D) float32 tensor, detached, on the model's device;
    ``take()`` returns it as numpy and clears it, so that a forward that did not run is noticed. With
    ``keep="first"`` the first forward since the last ``take()`` is kept instead: the pass that an
    explanation method begins with, not the masked copies of the image that some methods run after it.
    Use as a context manager or call ``release()``; both remove the hook.
    """

    def __init__(self, model: nn.Module, layer: str = FEATURE_LAYER, *, keep: str = "last"):
        if keep not in ("first", "last"):
            raise ValueError(f"keep must be 'first' or 'last', got {keep!r}")
        try:
            module = model.get_submodule(layer)
        except AttributeError as exc:
            raise ValueError(f"no module at path {layer!r} in {type(model).__name__}") from exc
        self.vectors: Optional[torch.Tensor] = None
        self._keep_first = keep == "first"
        self._handles = [module.register_forward_hook(self._on_forward)]

    def _on_forward(self, module: nn.Module, inputs, output) -> None:
        if not isinstance(output, torch.Tensor) or output.dim() < 2:
            got = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(f"feature layer must output a (N, D, ...) tensor, got {got}")
        if self._keep_first and self.vectors is not None:
            return
        self.vectors = output.detach().flatten(1).float()

    def take(self) -> np.ndarray:
        if self.vectors is None:
            raise RuntimeError("no forward ran through the feature layer since the last take()")
        out, self.vectors = self.vectors.cpu().numpy(), None
        return out

    def release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.vectors = None

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


@dataclass
class EmbedBatch:
    """One batch of a loader: positions in the split, labels, logits and feature vectors (numpy)."""

    index: np.ndarray  # (N,)
    label: np.ndarray  # (N,)
    logits: np.ndarray  # (N, C) float32
    vectors: np.ndarray  # (N, D) float32


def embed_batches(model: nn.Module, loader, device: torch.device, *, env: DistEnv, skipped: Skipped,
                  amp: bool = False, desc: str = "embed") -> Iterator[EmbedBatch]:
    """Logits and feature vectors of every batch of ``loader`` (the project's ``(x, y, idx, bad, sizes)``
    batches); files the loader could not read are recorded in ``skipped``. One ``EmbedBatch`` per loader
    batch, an empty one (0 rows) when none of its files could be read, so that ranks which step through
    their shards together stay in step. Under torchrun each rank yields its own shard."""
    autocast = torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    with _eval_mode(model):
        for x, y, idx, bad, _sizes in tqdm(loader, desc=desc, leave=False, disable=not env.is_main):
            skipped.add(bad)
            if x is None:
                dim = feature_dim(model)
                yield EmbedBatch(index=np.empty(0, np.int64), label=np.empty(0, np.int64),
                                 logits=np.empty((0, 0), np.float32), vectors=np.empty((0, dim), np.float32))
                continue
            with torch.inference_mode(), autocast:
                logits, vecs = logits_and_features(model, x.to(device, non_blocking=True))
            yield EmbedBatch(index=idx.numpy(), label=y.numpy(), logits=logits.float().cpu().numpy(),
                             vectors=vecs.float().cpu().numpy())


def with_vectors(model: nn.Module, batches: Iterable) -> Iterator:
    """Pass on the results of a lazy batch loop (``core.engine.predict_batches``), each with the feature
    vectors of the forward that produced it in its ``vectors`` attribute: no second forward.

    A :class:`FeatureTap` is held while the loop runs and released when it ends or is closed. Each item's
    vectors are those of the first forward through the model since the previous item (the pass that
    predicts and explains it); a result without a forward, or whose forward saw another number of
    images, raises RuntimeError.
    """
    with FeatureTap(model, keep="first") as tap:
        for result in batches:
            vectors = tap.take()
            if len(vectors) != len(result.index):
                raise RuntimeError(f"the feature layer saw {len(vectors)} images for a batch of {len(result.index)}")
            result.vectors = vectors
            yield result
