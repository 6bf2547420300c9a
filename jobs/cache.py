"""Write the decoded cache of a data set ahead of training, so the first epoch reads it instead of the JPEGs.

    python -m jobs.cache --data PATH --image-size 224 [--workers 8] [--cache-dir DIR]

Each split is decoded and resized once to the image size into one memory-mapped uint8 array (see
core.cache for the layout, the key and what invalidates it). Training and evaluation find it by the same
key; run again after a kill, it writes only the chunks that are missing. It prints one line per split.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from core.cache import CacheUnavailable, build_split, cache_bytes, default_cache_root, ENV_VAR
from core.defaults import MIN_IMAGE_SIZE
from core.splits import SPLITS
from jobs.common import DefaultsHelpFormatter, run_cli, setup_logging

log = logging.getLogger("jobs.cache")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m jobs.cache",
        description="Decode and resize every image of a data set once into the decoded cache that training "
        "and evaluation read.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="dataset folder (train/ valid/ test/ and/or sports.csv)")
    p.add_argument("--image-size", type=int, default=224, help="side in pixels of the stored images: the "
                   "--image-size of the training to come")
    p.add_argument("--splits", default=",".join(SPLITS), help="splits to cache, comma-separated")
    p.add_argument("--cache-dir", default=None,
                   help=f"cache folder (default: ${ENV_VAR}, else {default_cache_root()})")
    p.add_argument("--workers", type=int, default=2, help="decoding threads (0: decode in the main thread)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(args: argparse.Namespace) -> int:
    from core.data import discover  # torch loads here, not for --help

    setup_logging(args.verbose)
    if args.image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image-size {args.image_size}: must be at least {MIN_IMAGE_SIZE}")
    if args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    wanted = [s for s in args.splits.split(",") if s]
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown or not wanted:
        raise ValueError(f"--splits: got {args.splits!r}, expected a comma-separated subset of {', '.join(SPLITS)}")
    index = discover(Path(args.data))
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_root()
    for split in wanted:
        if split not in index.splits:
            print(f"{split}: absent ({index.absent.get(split, 'not in the data set')})")
            continue
        samples = index.splits[split]
        t0 = time.perf_counter()
        try:
            done = build_split(root, index.root, samples, split, args.image_size, workers=args.workers)
        except CacheUnavailable as exc:
            raise ValueError(str(exc)) from None  # no JPEG path to fall back on here: say why and stop
        skipped = int((~done.ok).sum())
        print(f"{split}: {len(done)} images, {skipped} skipped, {cache_bytes(len(done), args.image_size) / 1e9:.2f} GB "
              f"at {args.image_size} px in {done.folder} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
