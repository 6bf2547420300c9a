"""Throughput of the CAM methods on the CPU: inference alone, ours (predictions + five gradient methods for
the predicted and the true class), and pytorch-grad-cam producing the same maps.

    python -m bench.cams [--batch 16] [--n 48] [--size 224] [--threads 2] [--classes 100]

All three run SportsVGG (random initialisation; speed does not depend on the weights) on the same
batches, taking turns batch by batch. Ours is ``predict_and_explain_many`` with Grad-CAM, Grad-CAM++,
XGrad-CAM, LayerCAM and HiResCAM: one forward, one backward per target through the layers above the CAM
layer; with random labels nearly every image is a mistake, so it also makes the contrast maps
(pred vs true), which the library is not asked for. pytorch-grad-cam runs each method class twice per
batch, for [pred] and for [true], as a user of that library would to get the same maps: ten passes of
forward and full backward.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from core.cammaps import GRADIENT_METHODS
from core.gradcam import predict_and_explain_many
from core.model import DEFAULT_CAM_LAYER, SportsVGG, resolve_module

LIBRARY_CLASSES = {
    "gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "hirescam": "HiResCAM",
}
GOAL_VS_INFERENCE = 0.85
GOAL_VS_LIBRARY = 15.0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--n", type=int, default=48, help="images timed per contender (default: 48)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default: 224)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--classes", type=int, default=100, help="classes of the model (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and inputs (default: 0)")
    return parser


def inference_only(model, x, labels):
    with torch.inference_mode():
        model(x)


def ours(model, x, labels):
    predict_and_explain_many(model, x, labels, GRADIENT_METHODS)


def pytorch_grad_cam(model, x, labels):
    """Each method class in turn, hooked for its own two calls and released, as a user would."""
    import pytorch_grad_cam as pgc
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = resolve_module(model, DEFAULT_CAM_LAYER)
    for name in GRADIENT_METHODS:
        with getattr(pgc, LIBRARY_CLASSES[name])(model=model, target_layers=[layer]) as cam:
            cam(input_tensor=x, targets=None)  # targets=None explains the prediction
            cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in labels])
    model.zero_grad(set_to_none=True)


def time_contenders(contenders: dict, model, batches) -> dict[str, tuple[float, float]]:
    """Per contender: (images per wall second, images per CPU second of this process).

    One untimed warm-up batch each, then the contenders take turns batch by batch, so that load from
    other processes on a shared machine falls on all of them alike.
    """
    for fn in contenders.values():
        fn(model, *batches[0])
    wall = dict.fromkeys(contenders, 0.0)
    cpu = dict.fromkeys(contenders, 0.0)
    for x, labels in batches:
        for name, fn in contenders.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(model, x, labels)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
    images = sum(len(x) for x, _ in batches)
    return {name: (images / wall[name], images / cpu[name]) for name in contenders}


def machine_load() -> str:
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    state = "busy" if load > 0.5 * cores else "idle"
    return f"load average {load:.1f} on {cores} cores ({state})"


def main(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    if args.batch < 1 or args.n < 1 or args.size < 32 or args.threads < 1 or args.classes < 2:
        raise ValueError(
            f"need --batch >= 1, --n >= 1, --size >= 32, --threads >= 1, --classes >= 2; got --batch {args.batch}, "
            f"--n {args.n}, --size {args.size}, --threads {args.threads}, --classes {args.classes}"
        )
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = SportsVGG(args.classes).eval()
    n_batches = -(-args.n // args.batch)
    batches = [
        (torch.randn(args.batch, 3, args.size, args.size), torch.randint(0, args.classes, (args.batch,)))
        for _ in range(n_batches)
    ]
    print(f"SportsVGG({args.classes}), {n_batches} x {args.batch} images at {args.size} px, "
          f"{args.threads} threads, torch {torch.__version__}; before: {machine_load()}")
    contenders = {
        "(a) inference only (inference_mode)": inference_only,
        "(b) ours: predictions + 5 methods x (pred, true)": ours,
        "(c) pytorch-grad-cam: 5 methods x 2 calls": pytorch_grad_cam,
    }
    rates = time_contenders(contenders, model, batches)
    print(f"after: {machine_load()}")
    print(f"{'contender':<50} {'images/s':>9} {'images/CPU-s':>13}")
    for name, (per_wall, per_cpu) in rates.items():
        print(f"{name:<50} {per_wall:>9.2f} {per_cpu:>13.2f}")
    inf, our, lib = rates.values()
    print(f"ours / inference        {our[0] / inf[0]:.2f} wall, {our[1] / inf[1]:.2f} CPU  "
          f"(goal >= {GOAL_VS_INFERENCE})")
    print(f"ours / pytorch-grad-cam {our[0] / lib[0]:.2f} wall, {our[1] / lib[1]:.2f} CPU  "
          f"(goal >= {GOAL_VS_LIBRARY:g})")
    return rates


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
