"""The images a run's model finds most like a given one: nearest neighbours of its stored feature vector.

    python -m jobs.similar --run RUN --image RELPATH [--k 10] [--split train] [--json] [--db URL]

RELPATH is the image's path relative to the run's data folder, as the store lists it (``jobs.runs``, the
dashboard). Neighbours come from ``--split`` (default the training set; ``all`` for every split) by
cosine similarity of the vectors ``jobs.train`` and ``jobs.embed`` stored, exact search; an image is not
its own neighbour, an exact copy of it is (similarity 1). No model is loaded.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Optional

import pandas as pd

from core.lookalikes import neighbours_table
from core.neighbours import NeighbourIndex, describe_neighbour_labels
from core.splits import SPLITS, TRAIN
from db import queries, store
from db.queries import embed as embed_queries
from jobs.common import DefaultsHelpFormatter, add_db_arg, add_run_arg, run_cli, say_run, setup_logging

log = logging.getLogger("jobs.similar")
ALL = "all"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.similar", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--image", required=True, help="the image's path relative to the run's data folder")
    p.add_argument("--k", type=int, default=10, help="number of neighbours")
    p.add_argument("--split", default=TRAIN, help=f"comma-separated splits the neighbours come from, or '{ALL}'")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _splits(value: str) -> Optional[list[str]]:
    if value.strip() == ALL:
        return None
    splits = [x for x in value.split(",") if x]
    bad = [x for x in splits if x not in SPLITS]
    if bad or not splits:
        raise ValueError(f"--split must be '{ALL}' or splits among {', '.join(SPLITS)}, got {value!r}")
    return splits


def _name(names, i) -> Optional[str]:
    return None if i is None or pd.isna(i) else names[int(i)]


def _record(row: pd.Series, names) -> dict[str, Any]:
    pred = None if pd.isna(row["pred"]) else int(row["pred"])
    conf = None if pd.isna(row["confidence"]) else round(float(row["confidence"]), 4)
    return dict(image_id=int(row["image_id"]), split=str(row["split"]), relpath=str(row["relpath"]),
                label=int(row["label"]), label_name=names[int(row["label"])], pred=pred, pred_name=_name(names, pred),
                confidence=conf)


def find_similar(s, run_ref, relpath: str, *, k: int, splits: Optional[list[str]]) -> dict[str, Any]:
    """The neighbours of the run's image at ``relpath`` as a JSON-ready dict."""
    if k < 1:
        raise ValueError(f"--k must be at least 1, got {k}")
    run = queries.find_run(s, run_ref)
    say_run(run_ref, run)
    found = embed_queries.images_at(s, run.id, relpath)
    if not found:
        raise ValueError(f"run {run.id} ({run.name}) has no image {relpath!r} (paths are relative to its data "
                         f"folder {run.data_root}, e.g. as 'python -m jobs.runs' and the dashboard show them)")
    if len(found) > 1:
        log.warning("%s is listed in splits %s; using the %s one", relpath, ", ".join(f[1] for f in found), found[0][1])
    image_id, image_split = found[0][0], found[0][1]
    t0 = time.perf_counter()
    load = None if splits is None else sorted(set(splits) | {image_split})
    stored = embed_queries.stored_vectors(s, run.id, splits=load)
    if image_id not in set(stored.images["image_id"].tolist()):
        raise ValueError(f"image {relpath!r} of run {run.id} has no feature vector; compute them with "
                         f"'python -m jobs.embed --run {run.id}'")
    index = NeighbourIndex(stored.vectors)
    t1 = time.perf_counter()
    table = neighbours_table(stored.images, index, image_id, k, splits)
    t2 = time.perf_counter()
    names = list(run.classes)
    me = _record(stored.images.loc[stored.images["image_id"] == image_id].iloc[0], names)
    pool = "training" if splits == [TRAIN] else ("" if splits is None else "/".join(splits))
    target = me["pred"] if me["pred"] is not None else me["label"]
    neighbours = [{"rank": int(r["rank"]), **_record(r, names), "similarity": round(float(r["similarity"]), 6)}
                  for _, r in table.iterrows()]
    return dict(run_id=run.id, run_name=run.name, image=me, k=k, splits=splits or ALL, neighbours=neighbours,
                summary=describe_neighbour_labels(table["label"].tolist(), target, names, pool=pool),
                timing=dict(vectors=len(stored), load_s=round(t1 - t0, 4), query_ms=round(1000 * (t2 - t1), 3)))


def format_table(result: dict[str, Any]) -> str:
    me = result["image"]
    seen = f"predicted {me['pred_name']} at {me['confidence']:.0%}" if me["pred"] is not None else "no prediction"
    pool = "images (every split)" if result["splits"] == ALL else f"{','.join(result['splits'])} images"
    lines = [f"run {result['run_id']} ({result['run_name']}): the {len(result['neighbours'])} nearest {pool} "
             f"of {me['relpath']} ({me['split']}, labelled {me['label_name']}, {seen})"]
    if not result["neighbours"]:
        lines.append("  no candidates in that split")
    else:
        w = max(len("label"), *(len(n["label_name"]) for n in result["neighbours"]))
        wp = max(len("prediction"), *(len(n["pred_name"] or "-") for n in result["neighbours"]))
        lines.append(f"  {'#':>3}  {'similarity':>10}  {'split':<5}  {'label':<{w}}  {'prediction':<{wp}}  relpath")
        for n in result["neighbours"]:
            pred = n["pred_name"] or "-"
            lines.append(f"  {n['rank']:>3}  {n['similarity']:>10.4f}  {n['split']:<5}  {n['label_name']:<{w}}  "
                         f"{pred:<{wp}}  {n['relpath']}")
    lines.append(result["summary"] + ".")
    t = result["timing"]
    lines.append(f"({t['vectors']:,} vectors loaded in {t['load_s']:.2f} s; the query took {t['query_ms']:.1f} ms)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    splits = _splits(args.split)
    engine = store.make_engine(args.db, readonly=True)
    try:
        with store.make_sessionmaker(engine)() as s:
            result = find_similar(s, args.run, args.image, k=args.k, splits=splits)
    finally:
        engine.dispose()
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
