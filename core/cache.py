"""The decoded cache: each split decoded and resized once into one memory-mapped uint8 array.

Image ``i`` of a split is stored as ``model_pixels(open_rgb(file_i), S)``, the exact pixels evaluation feeds
the model at image size ``S``, so evaluation through the cache gives the same tensors as the JPEG path. The
training crop is drawn, as before, in the coordinates of the original ``w`` x ``h`` image (kept in the
index) and mapped onto the ``S`` x ``S`` array (core.augment): the augmentation squeezes every crop to a
square, so a square array of side ``S`` holds all it needs. A bad file stays a row of zeros with its reason.

One split's cache is the folder ``<cache root>/<root tag>-<split>-<S>px-<key>/``:

- ``pixels.npy``: ``(N, S, S, 3)`` uint8 (``np.load(path, mmap_mode="r")`` reads it);
- ``index.json``: relative paths, labels, skip reasons ("" for a good file), original sizes; written last,
  its presence marks the cache complete;
- ``progress.log`` while building: one JSON line per chunk written (after its pixels are synced to disk); a
  build killed part-way resumes with the chunks it does not list;
- ``.lock``: held by the process that builds.

The key is a hash of the format version, ``S``, the split and, per image in order, its relative path, label,
size in bytes and modification time (stat only, no reading). A changed, added, removed or relabelled file
gives another key and so a fresh cache (the stale one of the same data folder is removed); a file rewritten
with the same size and the same mtime is not noticed. A cache that cannot be written (read-only folder, full
disk) raises CacheUnavailable; :class:`DecodedCache` turns that into one warning and the JPEG path.

This module reads and writes numpy arrays only; it does not need torch.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
from numpy.lib import format as npformat

from core.images import BadImage, model_pixels, open_rgb

try:  # POSIX; elsewhere two builders of one folder are not kept apart
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHUNK = 256  # images per write and per progress line
ENV_VAR = "SPORTS_DECODED_CACHE"


class CacheUnavailable(OSError):
    """The cache cannot be written here (read-only folder, full disk); the message says why."""


def default_cache_root() -> Path:
    """``$SPORTS_DECODED_CACHE`` when set, else ``~/.cache/sports-cam/decoded``."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sports-cam" / "decoded"


def cache_bytes(n_images: int, side: int) -> int:
    """Size of the pixel array of ``n_images`` at ``side`` x ``side`` (the index adds about 100 bytes each)."""
    return n_images * side * side * 3


def _check(side: int, samples: Sequence) -> None:
    if side < 1:
        raise ValueError(f"cache side must be a positive number of pixels, got {side}")
    if not samples:
        raise ValueError("cannot cache an empty split: expected at least one sample")


def split_key(data_root: Path, samples: Sequence, split: str, side: int) -> str:
    """Hex key of one split's cache: format, side, split, and per file its path, label, size and mtime."""
    h = hashlib.blake2b(f"v{FORMAT_VERSION}|{split}|{side}".encode(), digest_size=16)
    for s in samples:
        try:
            st = os.stat(Path(data_root) / s.relpath)
            stamp = f"{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"\n{s.relpath}|{s.label}|{stamp}".encode())
    return h.hexdigest()


def split_folder(cache_root: Path, data_root: Path, split: str, side: int, key: str) -> Path:
    tag = hashlib.blake2b(str(Path(data_root).resolve()).encode(), digest_size=4).hexdigest()
    return Path(cache_root) / f"{tag}-{split}-{side}px-{key[:20]}"


@dataclass
class DecodedSplit:
    """The cache of one split, opened read-only; also the data set object the jobs keep (samples, size,
    set_epoch), like core.data.ImageDataset."""

    folder: Path
    samples: list
    size: int  # the side S of every stored image
    pixels: np.ndarray  # (N, S, S, 3) uint8, memory-mapped
    reasons: list[str]  # "" for a good file, else why it is skipped
    wh: np.ndarray  # (N, 2) int: the original width and height, 0 for a skipped file
    epoch: int = 0

    def __post_init__(self) -> None:
        self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        self.ok = np.array([not r for r in self.reasons], dtype=bool)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def take(self, indices: Sequence[int]) -> np.ndarray:
        """The images at ``indices`` as one (k, S, S, 3) array, read in file order."""
        idx = np.asarray(indices, dtype=np.int64)
        order = np.argsort(idx, kind="stable")
        out = np.empty((len(idx), self.size, self.size, 3), dtype=np.uint8)
        out[order] = self.pixels[idx[order]]
        return out


# --------------------------------------------------------------------------- decoding

def decode_chunk(job: tuple[str, list[str], int]) -> tuple[np.ndarray, list[str], list[tuple[int, int]]]:
    """Decode the files of one chunk: their pixels at side x side, skip reasons and original sizes."""
    root, relpaths, side = job
    arr = np.zeros((len(relpaths), side, side, 3), dtype=np.uint8)
    reasons, sizes = [], []
    for j, rel in enumerate(relpaths):
        try:
            img = open_rgb(Path(root) / rel)
        except BadImage as exc:
            reasons.append(str(exc))
            sizes.append((0, 0))
            continue
        arr[j] = model_pixels(img, side)
        reasons.append("")
        sizes.append(img.size)
    return arr, reasons, sizes


def _decoded(jobs: list[tuple[int, tuple]], workers: int) -> Iterator[tuple[int, tuple]]:
    """(chunk number, decode_chunk result) in order; with workers, threads decode a bounded window ahead.

    Threads, not processes: Pillow lets go of the interpreter lock while it decodes and resizes, and a
    thread hands its chunk back without pickling 40 MB of pixels.
    """
    if workers <= 0:
        for k, job in jobs:
            yield k, decode_chunk(job)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cache-decode") as pool:
        pending: deque = deque()
        it = iter(jobs)
        for k, job in it:
            pending.append((k, pool.submit(decode_chunk, job)))
            if len(pending) >= 2 * workers:
                break
        try:
            while pending:
                k, fut = pending.popleft()
                yield k, fut.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append((nxt[0], pool.submit(decode_chunk, nxt[1])))
        finally:
            for _, fut in pending:
                fut.cancel()


# --------------------------------------------------------------------------- writing

def _unavailable(folder: Path, exc: OSError) -> CacheUnavailable:
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}.get(exc.errno, f"{type(exc).__name__}: {exc}")
    return CacheUnavailable(exc.errno or errno.EIO, f"decoded cache {folder} cannot be written: {what}")


def _open_pixels(path: Path, n: int, side: int) -> tuple[int, int, bool]:
    """(file descriptor, offset of the data, made afresh) of the pixel file; a missing or damaged one is
    made anew at its full size."""
    shape = (n, side, side, 3)
    if path.exists():
        try:
            with open(path, "rb") as fh:
                npformat.read_magic(fh)
                header = npformat.read_array_header_1_0(fh)
                offset = fh.tell()
            if header[0] == shape and path.stat().st_size == offset + cache_bytes(n, side):
                return os.open(path, os.O_WRONLY), offset, False
        except (OSError, ValueError):
            pass
    with open(path, "wb") as fh:
        npformat.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
        offset = fh.tell()
        fh.truncate(offset + cache_bytes(n, side))  # sparse until written
    return os.open(path, os.O_WRONLY), offset, True


def _read_progress(path: Path) -> dict[int, dict]:
    """Chunks listed as written; a line cut short by a kill is ignored (that chunk is redone)."""
    done: dict[int, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            done[int(rec["chunk"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return done


def _free_bytes_needed(pixels: Path, n: int, side: int) -> int:
    allocated = pixels.stat().st_blocks * 512 if pixels.exists() else 0
    return max(0, cache_bytes(n, side) - allocated)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _build(folder: Path, data_root: Path, samples: Sequence, side: int, key: str, split: str,
           workers: int, chunk: int) -> None:
    n = len(samples)
    pixels_path, progress_path = folder / "pixels.npy", folder / "progress.log"
    need = _free_bytes_needed(pixels_path, n, side)
    free = shutil.disk_usage(folder).free
    if need > free:
        raise CacheUnavailable(errno.ENOSPC, f"decoded cache {folder} cannot be written: it needs "
                               f"{need / 1e9:.2f} GB more, the disk has {free / 1e9:.2f} GB free")
    fd, offset, fresh = _open_pixels(pixels_path, n, side)
    try:
        if fresh:
            progress_path.unlink(missing_ok=True)  # what it listed is not in the new file
        done = _read_progress(progress_path)
        starts = list(range(0, n, chunk))
        jobs = [(k, (str(data_root), [s.relpath for s in samples[a:a + chunk]], side))
                for k, a in enumerate(starts) if k not in done]
        if done:
            log.info("decoded cache %s: resuming, %d of %d chunks already written", folder.name,
                     len(starts) - len(jobs), len(starts))
        t0, item = time.perf_counter(), side * side * 3
        with open(progress_path, "a") as prog:
            for j, (k, (arr, reasons, sizes)) in enumerate(_decoded(jobs, workers)):
                data, pos = memoryview(np.ascontiguousarray(arr)).cast("B"), offset + starts[k] * item
                while data:
                    wrote = os.pwrite(fd, data, pos)
                    data, pos = data[wrote:], pos + wrote
                os.fsync(fd)  # the pixels are on disk before the line that says so
                prog.write(json.dumps({"chunk": k, "reasons": reasons, "wh": sizes}) + "\n")
                prog.flush()
                os.fsync(prog.fileno())
                done[k] = {"reasons": reasons, "wh": sizes}
                if len(jobs) >= 20 and (j + 1) % (len(jobs) // 10) == 0:
                    log.info("decoded cache %s: %d/%d chunks, %.0f images/s", folder.name, j + 1, len(jobs),
                             (j + 1) * chunk / (time.perf_counter() - t0))
    finally:
        os.close(fd)
    reasons = [r for k in range(len(starts)) for r in done[k]["reasons"]]
    wh = [list(v) for k in range(len(starts)) for v in done[k]["wh"]]
    index = {"version": FORMAT_VERSION, "key": key, "split": split, "side": side, "n": n,
             "relpaths": [s.relpath for s in samples], "labels": [int(s.label) for s in samples],
             "reasons": reasons, "wh": wh}
    _write_atomic(folder / "index.json", json.dumps(index))
    progress_path.unlink(missing_ok=True)


def open_split(folder: Path, samples: Sequence, side: int, key: str) -> Optional[DecodedSplit]:
    """The complete cache in ``folder`` for exactly these samples, or None (absent, partial, other data)."""
    try:
        index = json.loads((folder / "index.json").read_text())
        if (index.get("version"), index.get("key"), index.get("side"), index.get("n")) != \
                (FORMAT_VERSION, key, side, len(samples)) or index["relpaths"] != [s.relpath for s in samples]:
            return None
        pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    except (OSError, ValueError, KeyError):
        return None
    if pixels.shape != (len(samples), side, side, 3) or pixels.dtype != np.uint8:
        return None
    return DecodedSplit(folder, list(samples), side, pixels, list(index["reasons"]),
                        np.asarray(index["wh"], dtype=np.int64).reshape(-1, 2))


def _prune_stale(folder: Path) -> None:
    """Remove caches of the same data folder, split and side made from an older state of the files."""
    prefix = folder.name[: folder.name.rindex("-") + 1]
    for other in folder.parent.glob(prefix + "*"):
        if other == folder or not other.is_dir():
            continue
        try:
            with open(other / ".lock", "a") as lk:
                if fcntl is not None:
                    fcntl.flock(lk, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(other)
                log.info("decoded cache: removed stale %s", other.name)
        except OSError:
            continue  # in use by another process, or not ours to remove


def build_split(cache_root: Path, data_root: Path, samples: Sequence, split: str, side: int, *,
                workers: int = 0, chunk: int = CHUNK) -> DecodedSplit:
    """The split's cache, opened; built first (or finished, after a kill) when needed.

    Raises CacheUnavailable when it cannot be written; a full disk part-way removes the partial array.
    """
    _check(side, samples)
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 image, got {chunk}")
    key = split_key(data_root, samples, split, side)
    folder = split_folder(cache_root, data_root, split, side, key)
    found = open_split(folder, samples, side, key)
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a") as lock:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_EX)  # another process building it: wait, then use its work
            found = open_split(folder, samples, side, key)
            if found is None:
                t0 = time.perf_counter()
                log.info("decoded cache: writing %s split, %d images at %d px (%.2f GB) to %s", split,
                         len(samples), side, cache_bytes(len(samples), side) / 1e9, folder)
                _build(folder, data_root, samples, side, key, split, workers, chunk)
                log.info("decoded cache: %s split written in %.1f s", split, time.perf_counter() - t0)
    except CacheUnavailable:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            (folder / "pixels.npy").unlink(missing_ok=True)  # give the space back; the next try starts over
            (folder / "progress.log").unlink(missing_ok=True)
        raise _unavailable(folder, exc) from None
    if found is None:
        _prune_stale(folder)
        found = open_split(folder, samples, side, key)
        if found is None:
            raise CacheUnavailable(errno.EIO, f"decoded cache {folder}: written but cannot be read back")
    return found


class DecodedCache:
    """The cache folder one job uses; the first failure to write it is warned about once, and every split
    after it goes the JPEG way without trying again."""

    def __init__(self, root: Optional[str | os.PathLike] = None, *, workers: int = 0, chunk: int = CHUNK):
        self.root = Path(root).expanduser() if root else default_cache_root()
        self.workers, self.chunk = workers, chunk
        self.unavailable: Optional[str] = None

    def ensure(self, data_root: Path, samples: Sequence, split: str, side: int) -> Optional[DecodedSplit]:
        """The split's cache, built when needed; None (after one warning) when it cannot be written."""
        if self.unavailable is not None:
            return None
        try:
            return build_split(self.root, data_root, samples, split, side, workers=self.workers, chunk=self.chunk)
        except CacheUnavailable as exc:
            self.unavailable = str(exc)
            log.warning("%s; reading the JPEG files instead", exc)
            return None

    def open(self, data_root: Path, samples: Sequence, split: str, side: int) -> Optional[DecodedSplit]:
        """The split's complete cache, or None; never writes."""
        _check(side, samples)
        key = split_key(data_root, samples, split, side)
        return open_split(split_folder(self.root, data_root, split, side, key), samples, side, key)
