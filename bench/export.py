"""Time to export a full figure set of a 100-class run on the CPU.

``python -m bench.export`` builds a store like ``bench.dashboard``'s (100 classes, real 224 px JPEGs, the
rest hard-linked, 14x14 maps) with a data audit, then runs ``jobs.export`` on it in-process: the queries,
the plots through one headless Chromium, the image sheets and the tables. Goal: <= 30 s for PNG.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from core.splits import SPLITS, TEST, TRAIN, VALID
from db.builder import add_audit, build_store
from jobs import export

GOAL_S = 30.0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=100, help="number of classes (default 100)")
    p.add_argument("--train-per-class", type=int, default=125, help="train images per class (default 125)")
    p.add_argument("--eval-per-class", type=int, default=10, help="valid and test images per class (default 10)")
    p.add_argument("--files", type=int, default=400, help="distinct JPEG files written (default 400)")
    p.add_argument("--format", default="png", help="formats to export (default png)")
    p.add_argument("--out", default=None, help="keep the figure set in this folder (default: a temporary one)")
    return p


def main(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tmp = Path(tempfile.mkdtemp(prefix="bench-export-"))
    t = time.perf_counter()
    per = {TRAIN: args.train_per_class, VALID: args.eval_per_class, TEST: args.eval_per_class}
    url, run_id, _ = build_store(tmp, n_classes=args.classes, n_per_class=per, splits=SPLITS,
                                 image_size=224, reuse_files=args.files, error_rate=0.2, cam_size=14)
    add_audit(url, run_id, [[(TRAIN, f"train/{c}/001.jpg", i), (VALID, f"valid/{c}/001.jpg", i)]
                            for i, c in enumerate(["air hockey", "archery", "baseball"][: args.classes])])
    print(f"store: {args.classes * sum(per.values()):,} images, {args.classes} classes, built in "
          f"{time.perf_counter() - t:.1f} s")
    out = Path(args.out) if args.out else tmp / "figures"
    argv = ["--db", url, "--run", str(run_id), "--out", str(out), "--format", args.format]
    t = time.perf_counter()
    rc = export.main(export.get_args_parser().parse_args(argv))
    secs = time.perf_counter() - t
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    kinds: dict[str, int] = {}
    for f in manifest["files"]:
        kinds[f["kind"]] = kinds.get(f["kind"], 0) + 1
    size = sum((out / f["file"]).stat().st_size for f in manifest["files"]) / 1e6
    print(f"figure set: {len(manifest['files'])} files ({', '.join(f'{n} {k}s' for k, n in kinds.items())}), "
          f"{size:.1f} MB, {len(manifest['skipped'])} skipped, in {out}")
    ok = rc == 0 and secs <= GOAL_S and not manifest["skipped"]
    print(f"export: {secs:.1f} s (write_figure_set {manifest['seconds']:.1f} s), goal <= {GOAL_S:.0f} s: "
          f"{'yes' if ok else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(get_args_parser().parse_args()))
