"""Throughput of Grad-CAM on the CPU: inference alone, ours (predictions + two maps), pytorch-grad-cam.

    python -m bench.cams [--batch 16] [--n 48] [--size 224] [--threads 2] [--classes 100]

All three run SportsVGG (random initialisation; speed does not depend on the weights) on the same
batches. pytorch-grad-cam's GradCAM is called twice per batch, once per target set ([pred], [true]),
as a user of that library would to get both maps.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from core.gradcam import predict_and_explain
from core.model import DEFAULT_CAM_LAYER, SportsVGG, resolve_module


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="images per batch (default: 16)")
    parser.add_argument("--n", type=int, default=48, help="images timed per method (default: 48)")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default: 224)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    parser.add_argument("--classes", type=int, default=100, help="classes of the model (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for weights and inputs (default: 0)")
    return parser


def inference_only(model, x, labels):
    with torch.inference_mode():
        model(x)


def ours(model, x, labels):
    predict_and_explain(model, x, labels)


def make_pytorch_grad_cam(model):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam = GradCAM(model=model, target_layers=[resolve_module(model, DEFAULT_CAM_LAYER)])

    def run(model, x, labels):
        pred_maps = cam(input_tensor=x, targets=None)  # targets=None explains the prediction
        true_maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in labels])
        return pred_maps, true_maps

    return cam, run


def time_methods(methods: dict, model, batches) -> dict[str, tuple[float, float]]:
    """Per method: (images per wall second, images per CPU second of this process).

    One untimed warm-up batch each, then the methods take turns batch by batch, so that load from
    other processes on a shared machine falls on all of them alike.
    """
    for fn in methods.values():
        fn(model, *batches[0])
    wall = dict.fromkeys(methods, 0.0)
    cpu = dict.fromkeys(methods, 0.0)
    for x, labels in batches:
        for name, fn in methods.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(model, x, labels)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0
    images = sum(len(x) for x, _ in batches)
    return {name: (images / wall[name], images / cpu[name]) for name in methods}


def main(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    if args.batch < 1 or args.n < 1 or args.size < 32 or args.threads < 1:
        raise ValueError(
            f"need --batch >= 1, --n >= 1, --size >= 32, --threads >= 1; got --batch {args.batch}, "
            f"--n {args.n}, --size {args.size}, --threads {args.threads}"
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
          f"{args.threads} threads, torch {torch.__version__}")
    cam, run_pgc = make_pytorch_grad_cam(model)
    methods = {
        "(a) inference only (inference_mode)": inference_only,
        "(b) ours: predictions + 2 maps": ours,
        "(c) pytorch-grad-cam: 2 calls (pred, true)": run_pgc,
    }
    try:
        rates = time_methods(methods, model, batches)
    finally:
        cam.activations_and_grads.release()
        model.zero_grad(set_to_none=True)

    print(f"{'method':<44} {'images/s':>9} {'images/CPU-s':>13}")
    for name, (per_wall, per_cpu) in rates.items():
        print(f"{name:<44} {per_wall:>9.2f} {per_cpu:>13.2f}")
    inf, our, pgc = rates.values()
    print(f"ours / inference        {our[0] / inf[0]:.2f} wall, {our[1] / inf[1]:.2f} CPU  (goal >= 0.9)")
    print(f"ours / pytorch-grad-cam {our[0] / pgc[0]:.2f} wall, {our[1] / pgc[1]:.2f} CPU  (goal >= 4)")
    return rates


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
