"""Predict and explain image files on disk with a run's own model: overlays and a JSON of predictions.

    python -m jobs.explain IMAGE_OR_FOLDER... --run RUN --out DIR [--methods ...] [--class NAME] [--json]

The same as the dashboard's "Try an image" page, for files: the run's checkpoint, the preprocessing of its
evaluation, every gradient method's map of the top-1 class (and of ``--class``). A folder is searched for
images (recursively); a file that cannot be used gets one line on stderr and the rest goes on. Writes
``DIR/<image>.<method>.png`` (the map of the top-1 class over the model's view), ``DIR/<image>.<method>.<class>.png``
for ``--class``, and ``DIR/predictions.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Iterator, Optional, Sequence

from core.cammaps import COLORMAPS, DEFAULT_ALPHA, DEFAULT_COLORMAP, GRADIENT_METHODS, check_method
from core.images import BadImage
from core.report_parts import slug
from core.tryout import PICKED, TOP1, NoCheckpoint, decode_image, find_checkpoint, overlays, png_bytes, result_record
from db import queries, store
from db.queries.calibration import calibration_for
from jobs.common import DefaultsHelpFormatter, add_db_arg, add_run_arg, pick_device, run_cli, say_run, setup_logging

log = logging.getLogger("jobs.explain")

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DEFAULT_MAX_MB = 50


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.explain", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files, or folders searched for them")
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--out", required=True, help="folder for the overlays and predictions.json (created)")
    p.add_argument("--methods", default=",".join(GRADIENT_METHODS),
                   help="CAM methods, comma-separated (default: every gradient method)")
    p.add_argument("--class", dest="picked", default=None, metavar="NAME",
                   help="also explain this class (a class name of the run)")
    p.add_argument("--json", action="store_true", help="also print predictions.json to stdout")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    p.add_argument("--colormap", default=DEFAULT_COLORMAP, choices=sorted(COLORMAPS), metavar="NAME",
                   help="OpenCV colormap of the overlays")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="opacity of the map over the image, 0 to 1")
    p.add_argument("--max-mb", type=float, default=DEFAULT_MAX_MB, help="largest file read, in MB")
    p.add_argument("--checkpoint", default=None, help="checkpoint file (default: the run's own)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="where the model runs")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def parse_methods(value: str) -> list[str]:
    """``--methods``: comma-separated names, each checked, without repeats."""
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise ValueError("--methods: expected at least one method name")
    return list(dict.fromkeys(check_method(n) for n in names))


def find_images(inputs: Sequence[str], bad: list[str]) -> list[Path]:
    """Every file named, and every image file (by suffix) under each folder named, sorted per folder; a path
    that does not exist adds a line to ``bad``."""
    found: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            bad.append(f"{raw}: no such file or folder")
    return list(dict.fromkeys(found))


def output_stems(paths: Sequence[Path]) -> list[str]:
    """A distinct file-name stem per image: its own stem, with ``-2``, ``-3``... for repeats."""
    seen: dict[str, int] = {}
    out = []
    for p in paths:
        stem = p.stem or "image"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        out.append(stem if n == 1 else f"{stem}-{n}")
    return out


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    methods = parse_methods(args.methods)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {args.alpha}")
    engine = store.make_engine(args.db, create=False)
    with store.make_sessionmaker(engine)() as s:
        run = queries.find_run(s, args.run)
        say_run(args.run, run)
        cal = calibration_for(s, run.id)
    temperature = None if cal is None else float(cal.temperature)
    classes = list(run.classes)
    picked: Optional[int] = None
    if args.picked is not None:
        if args.picked not in classes:
            raise ValueError(f"--class {args.picked!r} is not a class of run {run.id}; expected one of "
                             f"{', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}")
        picked = classes.index(args.picked)
    ckpt = Path(args.checkpoint) if args.checkpoint else find_checkpoint(run.checkpoint_path, run.config,
                                                                        f"run {run.id} ({run.name})")
    bad: list[str] = []
    paths = find_images(args.inputs, bad)
    for line in bad:
        print(f"skipped {line}", file=sys.stderr)
    if not paths:
        raise ValueError(f"no image files found in {', '.join(args.inputs)}")

    log.info("run %d (%s): %d file(s), methods %s, checkpoint %s", run.id, run.name, len(paths), ",".join(methods),
             ckpt)
    out = Path(args.out)
    records, skipped = explain_files(paths, run, ckpt, out, args, methods, picked, temperature)
    if not records:
        raise ValueError(f"none of the {len(paths)} file(s) could be read as an image")
    doc = {"run": {"id": run.id, "name": run.name}, "checkpoint": str(ckpt), "methods": methods,
           "temperature": temperature, "images": records}
    text = json.dumps(doc, indent=2)
    (out / "predictions.json").write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    log.info("%d image(s) explained, %d skipped; overlays and predictions.json in %s", len(records),
             skipped + len(bad), out)
    return 0


def explain_files(paths: Sequence[Path], run: queries.RunInfo, ckpt: Path, out: Path, args: argparse.Namespace,
                  methods: Sequence[str], picked: Optional[int],
                  temperature: Optional[float]) -> tuple[list[dict], int]:
    """Decode, predict and explain the files ``--batch-size`` at a time, writing each one's overlays into
    ``out``; a file that cannot be used gets one line on stderr. Returns the records and how many were
    skipped. The model is loaded when the first usable image comes. With the run's ``temperature`` the
    records carry calibrated probabilities too."""
    predictor = None
    records, skipped = [], 0
    max_bytes = int(args.max_mb * 1_000_000)
    for chunk in _chunks(list(zip(paths, output_stems(paths))), args.batch_size):
        images, kept = [], []
        for path, stem in chunk:
            try:
                images.append(decode_image(path.read_bytes(), str(path), max_bytes, run.image_size))
                kept.append((path, stem))
            except (BadImage, OSError) as exc:
                print(f"skipped {exc if isinstance(exc, BadImage) else f'{path}: {exc}'}", file=sys.stderr)
                skipped += 1
        if not images:
            continue
        if predictor is None:
            predictor = load_predictor(ckpt, run, args.device)
            out.mkdir(parents=True, exist_ok=True)
        results = predictor.predict(images, [str(p) for p, _ in kept], methods=methods, picked=picked,
                                    batch_size=args.batch_size)
        for (path, stem), r in zip(kept, results):
            record = result_record(r, run.classes, temperature=temperature, source=str(path))
            record["overlays"] = write_overlays(out, stem, r, methods, run.classes, args.colormap, args.alpha)
            records.append(record)
    return records, skipped


def load_predictor(ckpt: Path, run: queries.RunInfo, device: str):
    """The run's model, checked to be of the run's classes and input size."""
    from core.inference import Predictor

    predictor = Predictor(ckpt, layer=run.cam_layer, device=str(pick_device(device)))
    if predictor.classes != list(run.classes):
        raise NoCheckpoint(f"checkpoint {ckpt} has other classes than run {run.id}; it is not that run's model")
    if predictor.image_size != run.image_size:
        raise NoCheckpoint(f"checkpoint {ckpt} takes {predictor.image_size} px images, run {run.id} "
                           f"{run.image_size} px; it is not that run's model")
    return predictor


def write_overlays(out: Path, stem: str, result, methods: Sequence[str], classes: Sequence[str], colormap: str,
                   alpha: float) -> list[str]:
    """One PNG per method of the top-1 map (and of the picked class's); returns their file names."""
    names = []
    jobs = [(TOP1, "")]
    if result.picked is not None:
        jobs.append((PICKED, "." + slug(classes[result.picked], max_len=30)))
    for which, suffix in jobs:
        for method, im in overlays(result, which, methods, colormap=colormap, alpha=alpha):
            name = f"{stem}.{method}{suffix}.png"
            (out / name).write_bytes(png_bytes(im))
            names.append(name)
    return names


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
