"""List the runs in the store.

    python -m jobs.runs [--db URL] [--json]
    python -m jobs.runs --skipped RUN [--db URL] [--json]   # the files RUN could not read, and why

Per run: id, name, status, number of classes and, per split, the images, predictions, skipped files,
Grad-CAM maps and top-1/top-5 accuracy. A run's snapshots (its model at the end of phase 1) are listed under
it, indented, and under ``"snapshots"`` in its JSON object rather than as runs of their own.
"""
from __future__ import annotations

import argparse
import json
import sys

from db import queries, store, storecheck
from jobs.common import DefaultsHelpFormatter, add_db_arg, run_cli


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.runs", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_db_arg(p)
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.add_argument("--skipped", metavar="RUN", default=None,
                   help="list instead the files RUN (an id, a name or 'latest') could not read, and why")
    return p


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def nest_snapshots(runs: list[dict]) -> list[dict]:
    """The runs, each with the list of its snapshots under ``"snapshots"``; a snapshot whose run is gone
    stays at the top level."""
    ids = {r["id"] for r in runs if r.get("stage") is None}
    out = [dict(r, snapshots=[]) for r in runs if r.get("stage") is None or r.get("parent_id") not in ids]
    by_id = {r["id"]: r for r in out}
    for r in runs:
        if r.get("stage") is not None and r.get("parent_id") in ids:
            by_id[r["parent_id"]]["snapshots"].append(r)
    return out


def _lines(r: dict, indent: str) -> list[str]:
    what = f"snapshot {r['stage']} of #{r['parent_id']}, " if r.get("stage") else ""
    lines = [f"{indent}#{r['id']} {r['name']}  [{r['status']}]  {what}{r['classes']} classes, {r['device']}, "
             f"{r['image_size']} px, weights {r['weights']}"]
    for split, c in r["splits"].items():
        lines.append(f"{indent}    {split:<5} images {c['images']:>6}  predictions {c['predictions']:>6}  "
                     f"skipped {c['skipped']:>4}  maps {c['maps']:>6}  top-1 {_pct(c['top1']):>6}  "
                     f"top-5 {_pct(c['top5']):>6}")
    for split, why in (r.get("absent_splits") or {}).items():
        lines.append(f"{indent}    {split:<5} absent ({why})")
    return lines


def format_table(runs: list[dict], db: str | None = None) -> str:
    """``runs`` as ``nest_snapshots`` returns them: each run, its snapshots indented under it."""
    if not runs:
        return f"no runs in the store; create one with: python -m jobs.train {storecheck.db_arg(db)}"
    lines = []
    for r in runs:
        lines += _lines(r, "")
        for snap in r.get("snapshots", []):
            lines += _lines(snap, "    ")
    return "\n".join(lines)


def format_skipped(run: queries.RunInfo, images) -> str:
    bad = images[images["skipped"]]
    lines = [f"#{run.id} {run.name}: {len(bad)} of {len(images)} files could not be read"]
    lines += [f"    {r.split:<5} {r.relpath}: {r.skip_reason or 'no reason recorded'}" for r in bad.itertuples()]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    engine = store.make_engine(args.db, readonly=True)
    if args.skipped is not None:
        with store.make_sessionmaker(engine)() as s:
            run = queries.find_run(s, args.skipped)
            images = queries.images_frame(s, run.id)
        if args.json:
            bad = images[images["skipped"]][["split", "relpath", "skip_reason"]]
            json.dump({"run_id": run.id, "skipped": bad.to_dict(orient="records")}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print(format_skipped(run, images))
        return 0
    with store.make_sessionmaker(engine)() as s:
        runs = nest_snapshots(queries.run_summaries(s))
    if args.json:
        json.dump(runs, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(runs, args.db))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
