"""Does Grad-CAM point at the object? The pointing game on a run whose images have object boxes (the demo).

    python -m bench.pointing [--db URL] [--run RUN] [--split test] [--figure PATH]

For the correctly classified images of the split, the peak of the stored predicted-class map (upsampled to
the model input) is compared with the object's box; the rate a uniformly random point would reach is printed
beside it. ``--figure`` writes a sheet of examples: the model input with the map, the box and the peak.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from PIL import Image, ImageDraw

from core.cammaps import TARGET_PRED, overlay, peak_location, pointing_game
from core.images import load_display_image
from core.splits import TEST
from db import queries, store


def localisation_rows(session, run_id: int, split: str) -> list:
    """The correctly classified images of ``split`` that have an object box and a stored map: one row each
    (relpath, label, bbox, width, height, cam) with ``cam`` the raw predicted-class map."""
    preds = queries.predictions_frame(session, run_id, [split])
    images = queries.images_frame(session, run_id, [split])
    rows = preds[preds["pred"] == preds["label"]].merge(images[["image_id", "bbox", "width", "height"]],
                                                        on="image_id")
    rows = rows[rows["bbox"].notna()]
    maps = queries.maps_for(session, run_id, rows["image_id"].tolist())
    return [SimpleNamespace(relpath=r.relpath, label=int(r.label), bbox=tuple(r.bbox), width=int(r.width),
                            height=int(r.height), cam=maps[r.image_id].map(TARGET_PRED))
            for r in rows.itertuples() if r.image_id in maps]


def example_sheet(rows, data_root: str, size: int, out: Path, n: int = 10, scale: int = 4) -> None:
    """One example per class (the first of each), up to ``n``."""
    firsts: dict[int, object] = {}
    for r in rows:
        firsts.setdefault(r.label, r)
    rows = [firsts[k] for k in sorted(firsts)]
    n = min(n, len(rows))
    side = size * scale
    sheet = Image.new("RGB", (side * n, side), "white")
    for k, r in enumerate(rows[:n]):
        cam = r.cam
        rgb = load_display_image(data_root, r.relpath, size)
        tile = Image.fromarray(overlay(rgb, cam, alpha=0.45)).resize((side, side), Image.Resampling.NEAREST)
        d = ImageDraw.Draw(tile)
        sx, sy = side / r.width, side / r.height
        x0, y0, x1, y1 = r.bbox
        d.rectangle([x0 * sx, y0 * sy, x1 * sx - 1, y1 * sy - 1], outline=(255, 255, 255), width=3)
        px, py = peak_location(cam, size, (r.width, r.height))
        d.ellipse([px * sx - 7, py * sy - 7, px * sx + 7, py * sy + 7], outline=(0, 0, 0), fill=(255, 255, 255),
                  width=2)
        sheet.paste(tile, (k * side, 0))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default=None, help="store URL (default: $SPORTS_DB, else runs/sports.db)")
    p.add_argument("--run", default="latest", help="run id, name or 'latest'")
    p.add_argument("--split", default=TEST, help="split to score")
    p.add_argument("--figure", default=None, help="write a sheet of examples to this PNG")
    args = p.parse_args()
    with store.make_sessionmaker(store.make_engine(args.db, readonly=True))() as s:
        run = queries.find_run(s, args.run)
        rows = localisation_rows(s, run.id, args.split)
    if not rows:
        raise SystemExit(f"run {run.id}: no correctly classified {args.split} images with boxes and maps")
    cams = [r.cam for r in rows]
    res = pointing_game(cams, [tuple(r.bbox) for r in rows], run.image_size, [(r.width, r.height) for r in rows])
    print(f"run {run.id} ({run.name}), {args.split}, layer {run.cam_layer}, input {run.image_size} px, "
          f"map {rows[0].cam.shape[0]}x{rows[0].cam.shape[1]}")
    print(f"pointing game over {res['n']} correctly classified images: hit rate {res['hit_rate']:.3f}, "
          f"random point {res['random_rate']:.3f}")
    if args.figure:
        example_sheet(rows, run.data_root, run.image_size, Path(args.figure))
        print(f"examples written to {args.figure}")


if __name__ == "__main__":
    main()
