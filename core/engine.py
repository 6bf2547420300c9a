"""One epoch of training, one validation pass, and the prediction pass that also explains.

The functions take plain objects (model, loader, optimizer, device) and return plain dicts; they know
nothing of the store. Under torchrun each rank calls them on its own shard and the sums are all-reduced.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import DatasetError
from core.defaults import PRECISIONS  # defined there for the --help of the jobs
from core.dist import DistEnv, all_reduce_sum
from core.progress import progress

log = logging.getLogger(__name__)


@dataclass
class Skipped:
    """Files a pass could not use: dataset index -> reason."""

    items: dict[int, str] = field(default_factory=dict)

    def add(self, bad: list[tuple[int, str]]) -> None:
        for i, reason in bad:
            if i not in self.items:
                log.warning("skipped image #%d: %s", i, reason)
            self.items[i] = reason


@dataclass(frozen=True)
class Precision:
    """The arithmetic of the forward pass: ``fp32`` (autocast off), ``bf16`` or ``fp16`` autocast.

    float16 needs a GradScaler (its small exponent underflows gradients); bfloat16 has float32's exponent
    and does not.
    """

    name: str
    device_type: str

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def needs_scaler(self) -> bool:
        return self.name == "fp16"

    def autocast(self):
        if self.dtype is None:
            return torch.autocast(device_type=self.device_type, enabled=False)
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def make_scaler(self) -> Optional[torch.amp.GradScaler]:
        return torch.amp.GradScaler(self.device_type) if self.needs_scaler else None


def _cuda_bf16() -> bool:
    """Whether the current GPU does bfloat16 natively (Ampere and later); emulation does not count."""
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch: no including_emulation
        return bool(torch.cuda.is_bf16_supported())


def choose_precision(device: torch.device, precision: Optional[str] = None, *, amp: bool = False) -> Precision:
    """The precision for ``--precision`` on ``device``.

    Unset: on CUDA bfloat16 where the GPU supports it, else float16 with a GradScaler; with the older
    ``amp=True`` (``--amp``) float16 on CUDA, as it always meant; float32 on the CPU. ``fp16`` needs CUDA
    (the CPU has no GradScaler path here); ``bf16`` needs a GPU that has it, and runs on the CPU too.
    """
    device = torch.device(device)
    kind = device.type
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision is None:
        if kind != "cuda":
            precision = "fp32"
        elif amp:
            precision = "fp16"
        else:
            precision = "bf16" if _cuda_bf16() else "fp16"
    if precision == "fp16" and kind != "cuda":
        raise ValueError(f"--precision fp16 needs a CUDA device, got {kind}; use fp32 or bf16")
    if precision == "bf16" and kind == "cuda" and not _cuda_bf16():
        raise ValueError("--precision bf16: this GPU has no native bfloat16 (before Ampere); use fp16 or fp32")
    return Precision(precision, kind)


def _autocast(device: torch.device, amp: "bool | Precision"):
    """Autocast for ``amp``: a Precision, or the older bool (True: float16 on CUDA, off elsewhere)."""
    if isinstance(amp, Precision):
        return amp.autocast()
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return torch.autocast(device_type=device.type, enabled=False)


def _zero(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros((), dtype=dtype, device=device)


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    *,
    frozen_base: bool,
    scaler: Optional[torch.amp.GradScaler],
    env: DistEnv,
    skipped: Skipped,
    clip_norm: Optional[float] = None,
    scheduler=None,
    label_smoothing: float = 0.0,
    desc: str = "train",
    precision: Optional[Precision] = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``; return the loss and accuracy averaged over images.

    ``scheduler``, when given, steps once per optimizer step (warm-up and cosine are per step);
    ``label_smoothing`` is that of the cross-entropy (the reported loss includes it). ``precision`` sets the
    autocast; without it, float16 autocast runs exactly when ``scaler`` is given.
    """
    amp = precision if precision is not None else scaler is not None
    model.train()
    # Sums stay on the device until the epoch ends: reading them per step would make the host wait for the
    # GPU every step, so it could not queue the next batch's work while the current one runs.
    loss_sum, correct, seen = _zero(device, torch.float64), _zero(device, torch.long), 0
    for x, y, _idx, bad, _sizes in progress(loader, desc, show=env.is_main):
        skipped.add(bad)
        blank = x is None
        if blank:
            if not env.distributed:
                continue
            # Every file of this batch was skipped, but under DDP the other ranks' backward waits for this
            # rank's gradient all-reduce: skipping the step would pair different collectives and abort the
            # job. Take part with one blank image whose loss counts zero.
            size = loader.dataset.size
            x, y = torch.zeros(1, 3, size, size), torch.zeros(1, dtype=torch.long)
        x, y = _to_device(x, device), y.to(device, non_blocking=True)
        with _autocast(device, amp):
            logits = model(x, frozen_base=frozen_base)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing) * (0.0 if blank else 1.0)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_norm:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_norm:
                nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if blank:
            continue
        n = y.numel()
        loss_sum += loss.detach().double() * n
        correct += (logits.argmax(1) == y).sum()
        seen += n
    loss_sum, correct, seen = all_reduce_sum(env, [loss_sum.item(), float(correct.item()), seen], device)
    if not seen:
        first = next(iter(skipped.items.values()), "no file met")
        raise DatasetError(f"split 'train': none of its images could be decoded in this epoch ({len(skipped.items)} "
                           f"skipped on this process; first: {first}); the log above names each file")
    return {"loss": loss_sum / seen, "acc": correct / seen, "images": int(seen)}


def evaluate(model: nn.Module, loader, device: torch.device, *, amp: "bool | Precision", env: DistEnv,
             skipped: Skipped, desc: str = "valid") -> dict[str, float]:
    """Loss and top-1 accuracy over this rank's shard, summed over ranks."""
    model.eval()
    loss_sum, correct, seen = _zero(device, torch.float64), _zero(device, torch.long), 0
    with torch.inference_mode():
        for x, y, _idx, bad, _sizes in progress(loader, desc, show=env.is_main):
            skipped.add(bad)
            if x is None:
                continue
            x, y = _to_device(x, device), y.to(device, non_blocking=True)
            with _autocast(device, amp):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
            seen += y.numel()
    loss_sum, correct, seen = all_reduce_sum(env, [loss_sum.item(), float(correct.item()), seen], device)
    if not seen:
        return {"loss": float("nan"), "acc": float("nan"), "images": 0}
    return {"loss": loss_sum / seen, "acc": correct / seen, "images": int(seen)}


@dataclass
class BatchResult:
    """Predictions and raw maps of one batch, as numpy arrays (index = position in the split)."""

    index: np.ndarray  # (N,)
    label: np.ndarray  # (N,)
    pred: np.ndarray  # (N,)
    confidence: np.ndarray  # (N,)
    top_idx: np.ndarray  # (N, k)
    top_prob: np.ndarray  # (N, k)
    loss: np.ndarray  # (N,) cross-entropy of the true class
    # float32 maps: (N, 2, h, w) [pred, true], or {method: (N, 3, h, w)} in core.cammaps.TARGETS order from
    # an explainer of several methods; None without CAMs
    maps: Optional[np.ndarray | dict[str, np.ndarray]]
    sizes: dict[int, tuple[int, int]]
    logits: Optional[np.ndarray] = None  # (N, C) float32, every class's logit
    vectors: Optional[np.ndarray] = None  # (N, D) float32 feature vectors, where a FeatureTap took them


def predict_batches(
    model: nn.Module,
    loader,
    device: torch.device,
    *,
    explain_fn: Optional[Callable] = None,
    env: DistEnv,
    skipped: Skipped,
    topk: int = 5,
    desc: str = "predict",
) -> Iterator[BatchResult]:
    """Yield per batch the predictions and, with ``explain_fn``, the Grad-CAM maps of [pred, true].

    ``explain_fn(model, x, y)`` returns ``(logits, maps)``; without it a plain inference pass runs.
    """
    model.eval()
    for x, y, idx, bad, sizes in progress(loader, desc, show=env.is_main):
        skipped.add(bad)
        if x is None:
            continue
        x = _to_device(x, device)
        yd = y.to(device)
        if explain_fn is not None:
            logits, maps = explain_fn(model, x, yd)
            if isinstance(maps, dict):  # several CAM methods: {method: maps}
                maps_np = {m: v.float().cpu().numpy() for m, v in maps.items()}
            else:
                maps_np = maps.float().cpu().numpy()
        else:
            with torch.inference_mode():
                logits = model(x)
            maps_np = None
        logits = logits.float()
        prob = logits.softmax(1)
        k = min(topk, prob.shape[1])
        top_prob, top_idx = prob.topk(k, dim=1)
        loss = F.cross_entropy(logits, yd, reduction="none")
        yield BatchResult(
            index=idx.numpy(),
            label=y.numpy(),
            pred=top_idx[:, 0].cpu().numpy(),
            confidence=top_prob[:, 0].cpu().numpy(),
            top_idx=top_idx.cpu().numpy(),
            top_prob=top_prob.cpu().numpy(),
            loss=loss.detach().cpu().numpy(),
            maps=maps_np,
            sizes=sizes,
            logits=logits.detach().cpu().numpy(),
        )
