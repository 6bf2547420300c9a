"""Cost per image of the faithfulness scores: Grad-CAM and its two baselines, deletion and insertion.

    python -m bench.trust [--sizes 64,224] [--n 4] [--steps 16] [--chunk 32] [--threads 2]

SportsVGG (random initialisation; the cost does not depend on the weights) explains a batch, then
``core.trust.faithfulness`` scores the three maps per image: 3 * 2 * (steps - 1) perturbed inputs plus
three shared endpoints (image, fill, blurred image) per image, batched in chunks. The inference cost of
one image at that size is printed alongside, so the ratio reads as "forward passes per image".
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from core import trust
from core.gradcam import explain
from core.model import SportsVGG


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,224", help="comma-separated input sides in pixels (default: 64,224)")
    p.add_argument("--n", type=int, default=4, help="images scored per size (default: 4)")
    p.add_argument("--steps", type=int, default=16, help="steps per curve (default: 16)")
    p.add_argument("--chunk", type=int, default=32, help="perturbed inputs per forward (default: 32)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--classes", type=int, default=100, help="classes of the model (default: 100)")
    return p


def main(args: argparse.Namespace) -> list[dict]:
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if args.n < 1 or args.steps < 2 or args.chunk < 1 or args.threads < 1 or any(s < 32 for s in sizes):
        raise ValueError(f"need --n >= 1, --steps >= 2, --chunk >= 1, --threads >= 1, sizes >= 32; got "
                         f"--n {args.n}, --steps {args.steps}, --chunk {args.chunk}, --sizes {args.sizes}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SportsVGG(args.classes).eval()
    forwards = 3 * 2 * (args.steps - 1) + 3
    print(f"SportsVGG({args.classes}), {args.n} images per size, {args.steps} steps, chunk {args.chunk}, "
          f"{args.threads} threads, torch {torch.__version__}; {forwards} forward passes per image "
          "(3 maps x 2 curves x (steps - 1) + 3 endpoints)")
    print(f"{'size':>5} {'inference s/img':>16} {'scores s/img':>13} {'CPU s/img':>10} {'ratio':>6}")
    rows = []
    for size in sizes:
        x = torch.randn(args.n, 3, size, size)
        with torch.inference_mode():
            model(x[:1])  # warm-up
            t = time.perf_counter()
            model(x)
            infer = (time.perf_counter() - t) / args.n
        w0, c0 = time.perf_counter(), time.process_time()
        logits, maps = explain(model, x, lambda lg: lg.argmax(1))
        trust.faithfulness(model, x, maps[:, 0], logits.argmax(1), list(range(args.n)), steps=args.steps,
                           chunk=args.chunk)
        wall = (time.perf_counter() - w0) / args.n
        cpu = (time.process_time() - c0) / args.n
        rows.append(dict(size=size, inference=infer, scores=wall, cpu=cpu))
        print(f"{size:>5} {infer:>16.3f} {wall:>13.2f} {cpu:>10.2f} {wall / infer:>6.0f}")
    return rows


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
