"""Compare two runs, or a run before and after fine-tuning, on the images they share.

    python -m jobs.compare --a RUN[:phase1] --b RUN[:phase1] [--split test] [--json] [--db URL]

``RUN`` is a run id, a run name or ``latest``; ``:phase1`` picks that run's phase-1 snapshot (the model at the
end of phase 1, which ``jobs.train`` keeps). Images are matched by file content (the SHA-256 stored per image),
else by path. Printed: images matched and left over, the flips each way, top-1 of each run with its 95 %
interval, McNemar's exact test in a sentence, the classes that changed most with a paired bootstrap interval,
and how far the explanations moved. ``--json`` prints the stable keys scripts rely on. A run that is still
running or has failed is refused with its status.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Optional

from core.cammaps import DEFAULT_METHOD, METHOD_NAMES
from core.compare import ComparisonResult
from core.stages import stage_label
from db import store
from db.queries.compare import compare_stored, describe
from db.queries.runs import RunInfo
from jobs.cli import DefaultsHelpFormatter, add_db_arg, run_cli

ALL = "all"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    p.add_argument("--a", required=True, metavar="RUN[:phase1]",
                   help="the run compared against (id, name or latest; :phase1 for its phase-1 snapshot)")
    p.add_argument("--b", required=True, metavar="RUN[:phase1]", help="the run compared with A, same forms")
    p.add_argument("--split", default="test", help=f"split to compare on, or {ALL!r} for every split both have")
    add_db_arg(p)
    p.add_argument("--json", action="store_true", help="print the comparison as JSON instead of a summary")
    p.add_argument("--details", action="store_true",
                   help="with --json: add the summary sentence, the image lists and the confusion changes")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=METHOD_NAMES,
                   help="CAM method whose stored maps measure the explanation drift")
    p.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the per-class intervals")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    p.add_argument("--top", type=int, default=10, help="classes listed in the summary, worst change first")
    return p


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _rate(r: dict[str, Any]) -> str:
    return (f"{_pct(r['acc'])} ({r['correct']} of {r['n']}, 95% interval {_pct(r['ci_low'])} to "
            f"{_pct(r['ci_high'])})")


def _who(info: RunInfo) -> str:
    return f"{describe(info)} ({stage_label(info.stage)}" + (f" of #{info.parent_id})" if info.stage else ")")


def format_summary(a: RunInfo, b: RunInfo, r: ComparisonResult, top: int = 10) -> str:
    j = r.to_json()
    lines = [f"A = {_who(a)}", f"B = {_who(b)}",
             f"split: {r.split or ALL}; {r.matched} images compared "
             f"({', '.join(f'{n} by {how}' for how, n in r.pairs['matched_by'].value_counts().items())}); "
             f"only in A: {len(r.only_a)}, only in B: {len(r.only_b)}"]
    if r.classes_only_a or r.classes_only_b:
        lines.append(f"compared on the {len(r.classes)} classes both runs have; only A has "
                     f"{len(r.classes_only_a)} ({', '.join(r.classes_only_a[:5]) or '-'}), only B has "
                     f"{len(r.classes_only_b)} ({', '.join(r.classes_only_b[:5]) or '-'})")
    if r.label_not_shared or len(r.relabelled):
        lines.append(f"left out: {r.label_not_shared} images of a class one run lacks, {len(r.relabelled)} "
                     "images labelled differently in the two runs")
    lines += [f"top-1 A: {_rate(j['top1_a'])}", f"top-1 B: {_rate(j['top1_b'])}",
              f"right -> wrong: {j['right_to_wrong']}, wrong -> right: {j['wrong_to_right']}, wrong in both: "
              f"{j['wrong_both']['total']} ({j['wrong_both']['same']} same prediction, "
              f"{j['wrong_both']['different']} different)",
              r.sentence]
    pc = r.per_class.head(top)
    if len(pc):
        lines.append(f"per class, worst change first ({min(top, len(r.per_class))} of {len(r.per_class)}; "
                     "change B - A with its paired bootstrap 95% interval):")
        width = min(28, max(len(str(c)) for c in pc["class"]))
        for row in pc.itertuples():
            lines.append(f"  {str(row[1])[:width]:<{width}}  n {row.n:>4}  A {_pct(row.acc_a):>6}  "
                         f"B {_pct(row.acc_b):>6}  change {100 * row.delta:+6.1f} points "
                         f"[{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}]")
    for target, what in (("true", "maps of the true class"), ("pred", "maps of the same predicted class")):
        d = j["drift"][target]
        if d["n"]:
            lines.append(f"explanation drift, {what}: median Spearman {d['spearman']:.2f}, median IoU of the top "
                         f"20% cells {d['iou']:.2f} ({d['n']} images)")
        else:
            lines.append(f"explanation drift, {what}: no pair of stored maps to compare")
    lines.append(f"right in both but looking elsewhere: {len(r.looking_elsewhere)} images; flipped and "
                 f"attention moved: {len(r.flipped_and_moved)}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    if args.resamples < 1 or args.top < 0:
        raise ValueError(f"--resamples must be >= 1 and --top >= 0, got {args.resamples} and {args.top}")
    split = None if args.split == ALL else args.split
    engine = store.make_engine(args.db, readonly=True)
    try:
        with store.make_sessionmaker(engine)() as s:
            a, b, result = compare_stored(s, args.a, args.b, split=split, method=args.method,
                                          resamples=args.resamples, seed=args.seed)
    finally:
        engine.dispose()
    if args.json:
        json.dump(result.to_json(details=args.details), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_summary(a, b, result, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
