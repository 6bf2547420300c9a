"""Images per second of training's parts: the input pipeline on the JPEG files and on the decoded cache, the
model's training step alone on tensors already on the device, and the real training loop fed by the cache.

    python -m bench.train                                 # the CPU: a generated set at 64 px, a few steps
    python -m bench.train --data ../shared/data/sports100-sample
    python -m bench.train --device cuda                   # the GPU check: 224 px, bf16, 300 loop steps

The figure that matters is loop / model alone, the share of the model's own speed that the real loop keeps
(goal on a GPU: >= 0.9); the input pipeline goal on a CPU is cache >= 5x JPEG. On a GPU it also prints the
step time and the throughput against the GPU's dense bfloat16 peak (a table of known GPUs, or
--peak-tflops). The model starts from random weights: speed does not depend on them.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.cache import DecodedCache, cache_bytes
from core.data import discover
from core.dist import DistEnv
from core.engine import Skipped, choose_precision, train_one_epoch
from core.feed import split_feed
from core.model import DEFAULT_CAM_LAYER, ModelMeta, build_model

# (defaults on the CPU, defaults on a GPU)
DEFAULTS = {"image_size": (64, 224), "batch_size": (16, 128), "images": (1200, 4096), "model_steps": (6, 50),
            "loop_steps": (6, 300), "per_class": (40, 80)}
# Dense bfloat16 tensor-core peak in TFLOP/s (vendor data sheets, without sparsity); first match wins.
PEAK_BF16 = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100", 989.0), ("GH200", 989.0), ("B200", 2250.0),
             ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0)]
# Known set sizes, for the cache's footprint: the Kaggle sports set (train + valid + test) and ImageNet-1k.
KNOWN_SETS = {"100 Sports (13,493 + 500 + 500 images)": 14_493,
              "ImageNet-1k (1,281,167 + 50,000 images)": 1_331_167}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.train", description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="dataset folder (default: a generated set in --work-dir)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model trains (default: cpu)")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="autocast (default: bf16 on a GPU that has it, else fp16; fp32 on the CPU)")

    def per_device(flag: str, what: str) -> None:
        key = flag[2:].replace("-", "_")
        cpu, gpu = DEFAULTS[key]
        p.add_argument(flag, type=int, default=None, help=f"{what} (default: {cpu} on the CPU, {gpu} on a GPU)")

    per_device("--image-size", "input side in pixels")
    per_device("--batch-size", "images per step")
    per_device("--images", "images timed per input pipeline")
    per_device("--model-steps", "timed steps of the model alone")
    per_device("--loop-steps", "timed steps of the real loop")
    per_device("--per-class", "training images per class of the generated set")
    p.add_argument("--classes", type=int, default=10, help="classes of the generated set (default: 10)")
    p.add_argument("--workers", type=int, default=None,
                   help="JPEG data-loader workers and cache-writing processes (default: 2, on a GPU up to 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--work-dir", default=None, help="folder for the generated set and the cache (default: a "
                   "temporary folder, removed at the end)")
    p.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, when not in the table")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and augmentation")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    gpu = args.device == "cuda"
    if gpu and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; run without it for the CPU bench")
    for key, pair in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, pair[gpu])
    if args.workers is None:
        args.workers = min(8, os.cpu_count() or 1) if gpu else 2
    small = {k: getattr(args, k) for k in ("image_size", "batch_size", "images", "model_steps", "loop_steps",
                                            "per_class", "classes") if getattr(args, k) < 1}
    if small or args.image_size < 32 or args.classes < 2 or args.workers < 0:
        raise ValueError(f"need sizes and counts >= 1, --image-size >= 32, --classes >= 2, --workers >= 0; got "
                         f"{small or vars(args)}")
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def machine_line(device: torch.device) -> str:
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    busy = "busy: other work shares these cores" if load > 0.5 * cores else "quiet"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return f"{where}; {cores} CPU cores, load {load:.1f} ({busy}); torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"


def prepare_data(args: argparse.Namespace, work: Path) -> Path:
    if args.data:
        return Path(args.data)
    from core.synth import CLASS_NAMES, generate_demo_dataset

    if args.classes > len(CLASS_NAMES):
        raise ValueError(f"--classes {args.classes}: the generated set has at most {len(CLASS_NAMES)}")
    root = work / "data"
    t0 = time.perf_counter()
    generate_demo_dataset(root, seed=args.seed, n_classes=args.classes, n_train=args.per_class, n_valid=2,
                          n_test=1, image_size=max(96, args.image_size))
    print(f"data: generated, {args.classes} classes x {args.per_class} training images at "
          f"{max(96, args.image_size)} px in {time.perf_counter() - t0:.1f} s")
    return root


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the JPEG loader's workers, once joined)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline_rate(feed, device: torch.device, n_images: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) of the loader alone, batches moved to the device.

    The first batch (worker start-up) is not timed; the CPU time counts the JPEG workers' whole lives.
    """
    seen, t0, c0, epoch = 0, None, cpu_seconds(), 0
    while seen < n_images:
        feed.sampler.set_epoch(epoch)
        feed.dataset.set_epoch(epoch)
        batches = iter(feed.loader)
        for x, *_ in batches:
            if x is None:
                continue
            x = x.to(device, non_blocking=True)
            if t0 is None:
                sync(device)
                t0 = time.perf_counter()
                continue
            seen += len(x)
            if seen >= n_images:
                break
        del batches  # a JPEG loader's workers are joined here, so their CPU time is counted
        epoch += 1
    sync(device)
    wall = time.perf_counter() - t0
    return seen / wall, seen / (cpu_seconds() - c0)


class Steps:
    """A training feed cut to ``n`` batches, running on into the next epochs when one ends."""

    def __init__(self, feed, n: int, first_epoch: int = 0):
        self.feed, self.n, self.first_epoch, self.dataset = feed, n, first_epoch, feed.dataset

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        done, epoch = 0, self.first_epoch
        while True:
            self.feed.sampler.set_epoch(epoch)
            self.feed.dataset.set_epoch(epoch)
            for batch in self.feed.loader:
                yield batch
                done += 1
                if done == self.n:
                    return
            epoch += 1


def forward_flops(model: nn.Module, size: int, device: torch.device) -> float:
    """Floating-point operations (2 per multiply-add) of one image's forward pass through convs and linears."""
    total = [0]

    def count(mod, inp, out):
        if isinstance(mod, nn.Conv2d):
            total[0] += out.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
        else:
            total[0] += out.numel() * mod.in_features
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train()
    return 2.0 * total[0]


def model_steps(model, opt, precision, scaler, x, y, steps: int, device) -> float:
    """Seconds of ``steps`` training steps on one batch already on the device (clipped at 5, as the loop)."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with precision.autocast():
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
    sync(device)
    return time.perf_counter() - t0


def loop_steps(model, opt, precision, scaler, feed, steps: int, first_epoch: int, device) -> tuple[float, int]:
    """(seconds, images) of train_one_epoch, the real loop, over ``steps`` batches of the feed."""
    sync(device)
    t0 = time.perf_counter()
    out = train_one_epoch(model, Steps(feed, steps, first_epoch), opt, device, frozen_base=False, scaler=scaler,
                          env=DistEnv(), skipped=Skipped(), clip_norm=5.0, precision=precision, desc="bench loop")
    sync(device)
    return time.perf_counter() - t0, out["images"]


def model_and_loop(model, opt, precision, scaler, feed, args, device, n_classes) -> tuple[float, float]:
    """(model-alone images/s, real-loop images/s), timed in alternating rounds so that other work on a shared
    machine falls on both alike; one untimed warm-up round first."""
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, n_classes, (args.batch_size,), device=device)
    rounds = 3 if device.type == "cpu" else 5
    warm = 1 if device.type == "cpu" else 10
    model_steps(model, opt, precision, scaler, x, y, warm, device)
    loop_steps(model, opt, precision, scaler, feed, warm, 0, device)
    model_s = loop_s = 0.0
    model_n = loop_n = 0
    for r in range(rounds):
        k = -(-args.model_steps // rounds)
        model_s += model_steps(model, opt, precision, scaler, x, y, k, device)
        model_n += k * args.batch_size
        k = -(-args.loop_steps // rounds)
        seconds, images = loop_steps(model, opt, precision, scaler, feed, k, r + 1, device)
        loop_s, loop_n = loop_s + seconds, loop_n + images
    return model_n / model_s, loop_n / loop_s


def main(args: argparse.Namespace) -> dict[str, float]:
    args = resolve(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = choose_precision(device, args.precision)
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"bench.train: {machine_line(device)}")
    print(f"settings: {args.image_size} px, batch {args.batch_size}, {precision.name}, {args.workers} workers")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-train-"))
    try:
        return run(args, device, precision, work)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


def run(args, device, precision, work: Path) -> dict[str, float]:
    index = discover(prepare_data(args, work))
    n_train = len(index.splits["train"])
    common = dict(train=True, size=args.image_size, batch_size=args.batch_size, env=DistEnv(), device=device,
                  seed=args.seed, workers=args.workers)
    rates = {"jpeg": pipeline_rate(split_feed(index, "train", **common), device, args.images)}
    cache = DecodedCache(work / "cache", workers=args.workers)
    t0 = time.perf_counter()
    feed = split_feed(index, "train", cache=cache, **common)
    if cache.unavailable:
        raise ValueError(f"the decoded cache could not be written: {cache.unavailable}")
    print(f"decoded cache: {n_train} training images written in {time.perf_counter() - t0:.1f} s, "
          f"{cache_bytes(n_train, args.image_size) / 1e6:.1f} MB; at {args.image_size} px "
          + ", ".join(f"{name} {cache_bytes(n, args.image_size) / 1e9:.2f} GB" for name, n in KNOWN_SETS.items()))
    rates["cache"] = pipeline_rate(feed, device, args.images)

    model = build_model(ModelMeta(index.classes, args.image_size, cam_layer=DEFAULT_CAM_LAYER)).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    flops = 3.0 * forward_flops(model, args.image_size, device)  # forward + backward (about twice forward)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    rates["model"], rates["loop"] = model_and_loop(model, opt, precision, precision.make_scaler(), feed, args,
                                                   device, len(index.classes))

    w = 46
    (jw, jc), (cw, cc) = rates["jpeg"], rates["cache"]
    print(f"\n{'part':<{w}} {'images/s':>10} {'per CPU-s':>10}")
    print(f"{f'input pipeline, JPEG files ({args.workers} workers)':<{w}} {jw:>10.1f} {jc:>10.1f}")
    print(f"{'input pipeline, decoded cache':<{w}} {cw:>10.1f} {cc:>10.1f}   cache / JPEG {cw / jw:.1f}x wall, "
          f"{cc / jc:.1f}x CPU (goal >= 5 on a CPU)")
    print(f"{'model step alone (synthetic, on the device)':<{w}} {rates['model']:>10.1f} {'':>10}   "
          f"{args.batch_size / rates['model'] * 1e3:.1f} ms per step of {args.batch_size}")
    print(f"{f'real training loop ({args.loop_steps} steps, cache)':<{w}} {rates['loop']:>10.1f} {'':>10}   "
          f"loop / model alone {rates['loop'] / rates['model']:.2f} (goal >= 0.9 on a GPU)")
    achieved = flops * rates["model"] / 1e12
    line = f"\nmodel step: {flops / 1e9:.1f} GFLOP per image (forward x 3), {achieved:.2f} TFLOP/s achieved"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16 if k in name), None)
        line += (f"; {name} dense bf16 peak {peak:.0f} TFLOP/s: {100 * achieved / peak:.1f} % of peak "
                 f"({precision.name}), real loop {100 * flops * rates['loop'] / 1e12 / peak:.1f} %"
                 if peak else f"; peak of {name} unknown (give --peak-tflops)")
    print(line)
    return rates


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except ValueError as exc:
        sys.exit(f"error: {exc}")
