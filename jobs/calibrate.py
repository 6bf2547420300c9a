"""Can a run's confidences be believed? Calibration on valid and test, and temperature scaling.

    python -m jobs.calibrate --run RUN [--json] [--bins 15] [--db URL]

Reads the logit vectors the evaluation stored with each prediction and reports, per split, the expected
and maximum calibration error (equal-width bins over the top-1 confidence), the negative log-likelihood,
the Brier score and the reliability bins; fits one temperature on the validation split by minimising its
NLL and gives ECE and NLL again with it. The report is stored per run (one, the latest), with what the
Calibration page draws (``core.calibration_views.split_figures`` under ``figures``): the dashboard's
Calibration page, its "calibrated confidences" switch and the export read it. ``jobs.train`` runs this at
the end of a run. Definitions: ``core.calibration``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Optional

from sqlalchemy.engine import make_url

from core.calibration import DEFAULT_BINS, MAX_BINS, T_BOUNDS, calibration_report
from core.calibration_views import FIGURES, split_figures
from core.splits import TEST, VALID
from db import queries, store
from db.queries.calibration import logits_coverage
from jobs.common import DefaultsHelpFormatter, add_db_arg, add_run_arg, run_cli, say_run, setup_logging
from jobs.rundir import run_dir_of

log = logging.getLogger("jobs.calibrate")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.calibrate", description=__doc__.split("\n\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    add_run_arg(p)
    add_db_arg(p)
    p.add_argument("--bins", type=int, default=DEFAULT_BINS, help=f"equal-width confidence bins (1-{MAX_BINS})")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def shown(url: Optional[str]) -> str:
    """The store URL for a command line shown to the user (any password hidden)."""
    return make_url(store.resolve_url(url)).render_as_string(hide_password=True)


def checkpoint_of(run: queries.RunInfo) -> Optional[Path]:
    """The checkpoint ``jobs.cams`` would load for the run, when it is still on disk."""
    for path in (run.checkpoint_path, run_dir_of(run.config, run.name) / "best.pt"):
        if path and Path(path).is_file():
            return Path(path)
    return None


def missing_logits(run: queries.RunInfo, url: Optional[str]) -> str:
    """One line: the run stored no logits, and how to get them."""
    what = f"run {run.id} ({run.name}) has no stored logits (its predictions predate them)"
    if checkpoint_of(run) is not None:
        return (f"{what}; recompute them from its checkpoint with `python -m jobs.cams --run {run.id} "
                f"--db {shown(url)}`, then run this again")
    return (f"{what}, and its checkpoint ({run.checkpoint_path or 'none recorded'}) is gone, so they cannot be "
            f"recomputed; a new run (`python -m jobs.train`) stores them")


def calibrate_run(session, run_ref: Any, *, bins: int = DEFAULT_BINS,
                  url: Optional[str] = None) -> tuple[queries.RunInfo, dict[str, Any]]:
    """Calibrate one run from its stored logits and store the report in the caller's transaction.

    ``ValueError`` (one line, with what to do) when the run has no valid/test predictions, or none of them
    kept their logits, or the validation split has none to fit the temperature on.
    """
    run = queries.find_run(session, run_ref)
    coverage = logits_coverage(session, run.id).set_index("split")
    splits = [s for s in (VALID, TEST) if s in coverage.index]
    if not splits:
        raise ValueError(f"run {run.id} ({run.name}) has no predictions of valid or test to calibrate; "
                         f"evaluate it with `python -m jobs.cams --run {run.id} --db {shown(url)}`")
    if int(coverage.loc[splits, "with_logits"].sum()) == 0:
        raise ValueError(missing_logits(run, url))
    if VALID not in splits or int(coverage.loc[VALID, "with_logits"]) == 0:
        raise ValueError(f"run {run.id} ({run.name}) has no validation predictions with logits; the temperature "
                         "is fitted on the valid split")
    for split in splits:
        n, k = (int(coverage.loc[split, c]) for c in ("predictions", "with_logits"))
        if k < n:
            log.warning("run %d: %s: %d of %d predictions kept their logits; calibrating on those (recompute the "
                        "rest with python -m jobs.cams --run %d)", run.id, split, k, n, run.id)
    stored = queries.logits_for(session, run.id, len(run.classes), splits)
    part = {s: stored.frame["split"].to_numpy() == s for s in splits}
    z, y = stored.logits, stored.frame["label"].to_numpy()
    test = (z[part[TEST]], y[part[TEST]]) if TEST in part and part[TEST].any() else (None, None)
    report = calibration_report(z[part[VALID]], y[part[VALID]], *test, bins=bins)
    # Stored beside the scores: what the Calibration page draws (core.calibration_views), so that a large
    # run's page reads these few numbers instead of decoding every logit vector again.
    figures = {s: split_figures(z[part[s]], y[part[s]], temperature=report["temperature"], bins=bins)
               for s in splits if part[s].any()}
    store.replace_calibration(session, run.id, temperature=report["temperature"], bins=bins,
                              report={**report, FIGURES: figures})
    return run, report


def at_bound(temperature: float) -> bool:
    return any(abs(math.log(temperature / b)) < 1e-3 for b in T_BOUNDS)


def format_report(run: queries.RunInfo, report: dict[str, Any], bins: int) -> str:
    t = report["temperature"]
    lines = [f"run {run.id} ({run.name}): temperature {t:.4g}, fitted on {report[VALID]['n']:,} valid images "
             f"({bins} bins); T > 1: the raw confidences were too high, T < 1: too low"]
    if at_bound(t):
        lines.append(f"  the fit ended on a bound of {T_BOUNDS}: the valid split cannot pin the temperature down "
                     "(e.g. every prediction right)")
    lines.append(f"{'split':<6}{'n':>7}{'ECE':>9}{'-> T':>9}{'MCE':>9}{'NLL':>9}{'-> T':>9}{'Brier':>9}")
    for split in (VALID, TEST):
        m = report.get(split)
        if m:
            lines.append(f"{split:<6}{m['n']:>7,}{m['ece']:>9.4f}{m['ece_calibrated']:>9.4f}{m['mce']:>9.4f}"
                         f"{m['nll']:>9.4f}{m['nll_calibrated']:>9.4f}{m['brier']:>9.4f}")
    return "\n".join(lines)


def calibrate_after_training(Session_, run_id: int, url: Optional[str] = None) -> Optional[dict[str, Any]]:
    """``jobs.train``'s last step: calibrate the run; a failure is logged, never raised (the run is complete
    without it, and ``python -m jobs.calibrate`` can be run later)."""
    bind = Session_.kw.get("bind")
    url = url or (bind.url.render_as_string(hide_password=False) if bind is not None else None)
    try:
        with Session_.begin() as s:
            run, report = calibrate_run(s, run_id, url=url)
    except Exception as exc:  # noqa: BLE001 - calibration is an extra; the trained run stands
        log.warning("run %d: calibration skipped: %s", run_id, exc)
        return None
    log.info("calibration:\n%s", format_report(run, report, DEFAULT_BINS))
    return report


def main(args: argparse.Namespace) -> int:
    setup_logging(args.verbose)
    engine = store.make_engine(args.db, create=False)
    try:
        with store.make_sessionmaker(engine).begin() as s:
            run, report = calibrate_run(s, args.run, bins=args.bins, url=args.db)
            say_run(args.run, run)
    finally:
        engine.dispose()
    if args.json:
        json.dump({"run_id": run.id, **report}, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(format_report(run, report, args.bins))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, get_args_parser()))
