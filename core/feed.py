"""Batches for training and evaluation: from the decoded cache when it can be had, else from the JPEG files.

:func:`split_feed` is the one call a job makes per split. Both paths yield the batches of
core.data.collate, ``(images, labels, indices, bad, sizes)``, in the same order for a given sampler, so
core.engine does not know which one it is fed by. On the cache path the images come out already on the
device: the uint8 batch is read from the memory-mapped array by a background thread (pinned, for a quick
copy to the GPU), then cropped, flipped and normalised on the device in one call (core.augment).
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Iterator, NamedTuple, Optional, Sequence

import torch

from core import dist
from core.augment import boxes_on_grid, draw_crops, normalize, resized_crops
from core.cache import DecodedCache, DecodedSplit
from core.data import DatasetIndex, ImageDataset, collate
from core.model import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)


class Feed(NamedTuple):
    dataset: object  # ImageDataset or DecodedSplit: .samples, .size, .set_epoch(epoch)
    sampler: Optional[torch.utils.data.DistributedSampler]  # training: call .set_epoch(epoch) each epoch
    loader: object  # iterable of collate-style batches, with len()


class CachedLoader:
    """Batches of a DecodedSplit in the order of ``order`` (a sampler or a list of indices)."""

    def __init__(self, split: DecodedSplit, order, batch_size: int, device: torch.device, *, train: bool,
                 seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD, prefetch: Optional[int] = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset, self.order, self.batch_size, self.device = split, order, batch_size, torch.device(device)
        # A reader thread pays off where the main thread waits on the GPU; on the CPU both threads would
        # contend for the interpreter lock instead, so batches are read in turn.
        if prefetch is None:
            prefetch = 2 if self.device.type == "cuda" else 0
        self.train, self.seed, self.mean, self.std, self.prefetch = train, seed, mean, std, prefetch

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def _read(self, idx: Sequence[int], epoch: int):
        """The host half of a batch: good indices, bad (index, reason), and the tensors uint8 pixels, labels
        and, for training, the crop boxes and flips drawn for this epoch (pinned for a GPU: a copy from
        pageable memory would wait for the GPU to finish its queue)."""
        ds = self.dataset
        good = [i for i in idx if ds.ok[i]]
        bad = [(i, ds.reasons[i]) for i in idx if not ds.ok[i]]
        if not good:
            return good, bad, None
        tensors = [torch.from_numpy(ds.take(good)), torch.from_numpy(ds.labels[good])]
        if self.train:
            draws = draw_crops([ds.samples[i].relpath for i in good], ds.wh[good], self.seed, epoch)
            tensors += [torch.from_numpy(boxes_on_grid(draws, ds.wh[good], ds.size)),
                        torch.from_numpy(draws[:, 4] > 0.5)]
        if self.device.type == "cuda":
            tensors = [t.pin_memory() for t in tensors]
        return good, bad, tensors

    def _reads(self, epoch: int, stop: threading.Event, out: queue.Queue) -> None:
        try:
            order = list(iter(self.order))
            for a in range(0, len(order), self.batch_size):
                if stop.is_set():
                    return
                out.put(self._read(order[a:a + self.batch_size], epoch))
            out.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            out.put(exc)

    def _prefetched(self, epoch: int) -> Iterator:
        """The host halves, read ahead by a thread."""
        stop, q = threading.Event(), queue.Queue(maxsize=self.prefetch)
        reader = threading.Thread(target=self._reads, args=(epoch, stop, q), daemon=True, name="cache-reader")
        reader.start()
        try:
            while True:
                item = q.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    q.get(timeout=0.05)
                except queue.Empty:
                    pass
            reader.join()

    def __iter__(self) -> Iterator:
        ds = self.dataset
        if self.prefetch > 0:
            parts = self._prefetched(ds.epoch)
        else:
            order = list(iter(self.order))
            parts = (self._read(order[a:a + self.batch_size], ds.epoch)
                     for a in range(0, len(order), self.batch_size))
        for good, bad, tensors in parts:
            if not good:
                yield None, None, None, bad, {}
                continue
            x, y, *crops = (t.to(self.device, non_blocking=True) for t in tensors)
            if crops:
                x = resized_crops(x, *crops, ds.size, self.mean, self.std)
            else:
                x = normalize(x, self.mean, self.std)
            sizes = {i: (int(ds.wh[i][0]), int(ds.wh[i][1])) for i in good}
            yield x, y, torch.tensor(good, dtype=torch.long), bad, sizes


def _jpeg_feed(index: DatasetIndex, split: str, *, train: bool, size: int, batch_size: int, env: dist.DistEnv,
               seed: int, mean, std, workers: int, positions: Optional[Sequence[int]] = None) -> Feed:
    ds = ImageDataset(index.root, index.splits[split], size, train=train, seed=seed, mean=mean, std=std)
    pin = torch.cuda.is_available()
    if train:
        sampler = torch.utils.data.DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank,
                                                      shuffle=True, seed=seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=workers,
                                             collate_fn=collate, pin_memory=pin, drop_last=False)
        return Feed(ds, sampler, loader)
    sub = torch.utils.data.Subset(ds, _eval_order(len(ds), env, positions))
    loader = torch.utils.data.DataLoader(sub, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate, pin_memory=pin)
    return Feed(ds, None, loader)


def _eval_order(n: int, env: dist.DistEnv, positions: Optional[Sequence[int]]) -> list[int]:
    """This rank's shard of ``positions`` (default: the whole split), in order."""
    if positions is None:
        return list(dist.shard(n, env))
    positions = [int(i) for i in positions]
    out = [i for i in positions if not 0 <= i < n]
    if out:
        raise ValueError(f"positions {out[:5]} are outside the split of {n} images, expected 0..{n - 1}")
    return [positions[k] for k in dist.shard(len(positions), env)]


def split_feed(index: DatasetIndex, split: str, *, train: bool, size: int, batch_size: int,
               env: dist.DistEnv, device: torch.device, seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
               workers: int = 2, cache: Optional[DecodedCache] = None,
               positions: Optional[Sequence[int]] = None) -> Feed:
    """The data set, sampler (training only) and loader of one split.

    With ``cache``, rank 0 opens the split's decoded cache, writing it first when absent (the other ranks
    wait, then open it); when it cannot be had, the split is read from the JPEG files as without ``cache``.
    Training batches are shuffled by a DistributedSampler seeded with ``seed`` and augmented with the
    per-image, per-epoch draws of core.data; evaluation batches hold this rank's shard in order, of the
    whole split or, with ``positions``, of those images of it (the cache is still that of the whole split,
    so a sample shares it with training and every other pass).
    """
    if split not in index.splits:
        raise ValueError(f"split {split!r} is not in the data set, expected one of {sorted(index.splits)}")
    if positions is not None and train:
        raise ValueError("positions pick images to evaluate; a training feed reads the whole split")
    samples = index.splits[split]
    decoded = None
    if cache is not None:
        if env.is_main:
            decoded = cache.ensure(index.root, samples, split, size)
        dist.barrier(env)
        if not env.is_main:
            decoded = cache.open(index.root, samples, split, size)
            if decoded is None:
                log.warning("decoded cache of %s not found in %s on this rank; reading the JPEG files", split,
                            cache.root)
    if decoded is None:
        return _jpeg_feed(index, split, train=train, size=size, batch_size=batch_size, env=env, seed=seed,
                          mean=mean, std=std, workers=workers, positions=positions)
    if train:
        sampler = torch.utils.data.DistributedSampler(decoded, num_replicas=env.world_size, rank=env.rank,
                                                      shuffle=True, seed=seed)
        return Feed(decoded, sampler, CachedLoader(decoded, sampler, batch_size, device, train=True, seed=seed,
                                                   mean=mean, std=std))
    order = _eval_order(len(decoded), env, positions)
    return Feed(decoded, None, CachedLoader(decoded, order, batch_size, device, train=False, mean=mean, std=std))


def device_batch_size(device: torch.device, requested: Optional[int] = None, *, cpu: int, cuda: int) -> int:
    """Images per batch of an evaluation pass: ``requested`` when given (``--batch-size``), else ``cuda`` on
    a GPU and ``cpu`` elsewhere. A GPU wants large batches to keep busy; on a CPU a large batch only costs
    memory, and small ones show progress sooner."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--batch-size must be at least 1, got {requested}")
        return int(requested)
    return cuda if torch.device(device).type == "cuda" else cpu
