"""What the "Try an image" page costs: loading a run's model, and one image's prediction plus its default maps.

    python -m bench.try_image [--size 224] [--classes 100] [--images 5] [--threads 2]

A SportsVGG checkpoint (random weights; the cost does not depend on them) is written to a temporary folder,
loaded with ``core.inference.Predictor`` as the page loads it (timed: the import of torch apart, the load
itself), then photos of 640 x 480 px are decoded from JPEG bytes and tried one at a time, as the page does
for one upload: decode, resize, predict, and every gradient method's map of the top-1 class. Goals: load
<= 5 s, <= 1.5 s per image on two idle cores. Prints the machine's load before and after, since wall times
on a shared machine say little on their own.
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

GOAL_LOAD_S = 5.0
GOAL_IMAGE_S = 1.5


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=224, help="model input side in pixels (default: 224)")
    p.add_argument("--classes", type=int, default=100, help="classes of the model (default: 100)")
    p.add_argument("--images", type=int, default=5, help="images tried, one at a time (default: 5)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    return p


def machine_load() -> str:
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    return f"load average {load:.1f} on {cores} cores ({'busy' if load > 0.5 * cores else 'idle'})"


def photo(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main(args: argparse.Namespace) -> int:
    print(f"before: {machine_load()}")
    t0 = time.perf_counter()
    import torch

    from core.cammaps import GRADIENT_METHODS
    from core.inference import Predictor
    from core.model import ModelMeta, SportsVGG, save_checkpoint
    from core.tryout import decode_image

    torch.set_num_threads(args.threads)
    import_s = time.perf_counter() - t0
    meta = ModelMeta(class_names=[f"class {i}" for i in range(args.classes)], image_size=args.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "best.pt"
        save_checkpoint(path, {"model": SportsVGG(args.classes).state_dict(), "meta": meta.to_dict()})
        t0, c0 = time.perf_counter(), time.process_time()
        predictor = Predictor(path)
        load_s, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    data = [photo(k) for k in range(args.images + 1)]
    predictor.predict([decode_image(data[0], "warm-up", 10**8, args.size)], ["warm-up"])  # untimed
    walls, cpus = [], []
    for k, d in enumerate(data[1:]):
        t0, c0 = time.perf_counter(), time.process_time()
        img = decode_image(d, f"photo {k}", 10**8, args.size)
        (r,) = predictor.predict([img], [f"photo {k}"], methods=GRADIENT_METHODS)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        assert set(r.maps) == set(GRADIENT_METHODS)
    per_image = statistics.median(walls)
    print(f"SportsVGG({args.classes}) at {args.size} px, {args.threads} torch threads, torch {torch.__version__}")
    print(f"import of torch and the model code: {import_s:.2f} s (once per dashboard process)")
    print(f"model load: {load_s:.2f} s wall, {load_cpu:.2f} s CPU (goal <= {GOAL_LOAD_S:g} s)")
    print(f"one image, prediction + {len(GRADIENT_METHODS)} gradient maps of the top-1: median {per_image:.2f} s wall "
          f"(min {min(walls):.2f}, max {max(walls):.2f}), {statistics.median(cpus):.2f} s CPU, over {len(walls)} "
          f"images (goal <= {GOAL_IMAGE_S:g} s)")
    print(f"after: {machine_load()}")
    met = load_s <= GOAL_LOAD_S and per_image <= GOAL_IMAGE_S
    print("goals met" if met else "goals not met on this machine at this load")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
