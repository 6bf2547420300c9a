"""The review verdicts applied to the dataset before a run trains on it (``jobs.train --apply-reviews``).

The verdicts that count (the latest per image, from the store or from a corrections CSV) relabel and drop
images, as ``core.reviews.apply_corrections`` says. What was applied, counts and the list, goes into the
run's configuration as ``config["reviews_applied"]``: the run says exactly which data it trained on, and a
resumed run replays that list instead of reading verdicts that may have changed since.

Relabelling a valid or test image is refused unless ``--allow-eval-relabel``: changing the evaluation data
changes what the run's accuracy measures, so it would no longer compare with runs on the original labels.
Drops apply to every split.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from sqlalchemy.engine import make_url

from core.reviews import apply_corrections, latest, read_csv
from db import queries, store

if TYPE_CHECKING:  # torch loads when a run applies reviews, not for jobs.train --help
    from core import dist
    from core.data import DatasetIndex

log = logging.getLogger("jobs.train")


def add_correction_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``jobs.train`` that apply review verdicts."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--apply-reviews", action="store_true",
                   help="relabel and drop images as the latest review verdicts in the store (--db) say; the run "
                   "records what was applied in its configuration (reviews_applied)")
    g.add_argument("--corrections", default=None, metavar="FILE",
                   help="as --apply-reviews, with the verdicts of a corrections CSV (python -m jobs.reviews "
                   "export writes one) instead of the store's (default: none)")
    p.add_argument("--allow-eval-relabel", action="store_true",
                   help="also relabel valid and test images (off by default: changing the evaluation data "
                   "changes what accuracy means, so the run would not compare with runs on the original labels; "
                   "drops apply to every split either way)")
    p.set_defaults(reviews_applied=None)  # filled by apply_reviews; a resumed run takes it from its checkpoint


def dataset_hashes(index: DatasetIndex) -> dict[tuple[str, str], str]:
    """(split, relpath) -> sha256 of every readable file of the dataset."""
    from core.data import file_sha256

    out = {}
    for split, samples in index.splits.items():
        for s in samples:
            h = file_sha256(index.root / s.relpath)
            if h is not None:
                out[(split, s.relpath)] = h
    return out


def _verdicts_from_file(path: str, index: DatasetIndex, hashes: dict[tuple[str, str], str]):
    by_sha = {h: key for key, h in hashes.items()}
    labels = {(split, s.relpath): index.classes[s.label] for split, ss in index.splits.items() for s in ss}

    def find(sha: str, split: str, relpath: str) -> Optional[tuple[str, str, str, str]]:
        key = by_sha.get(sha) if sha else ((split, relpath) if (split, relpath) in hashes else None)
        return None if key is None else (hashes[key], key[0], key[1], labels[key])

    return latest(read_csv(path, index.classes, find))


def plan_corrections(args: argparse.Namespace, index: DatasetIndex) -> dict[str, Any]:
    """What the verdicts change in ``index``: ``Applied.to_dict()`` plus where the verdicts came from."""
    hashes = dataset_hashes(index)
    if args.corrections:
        verdicts = _verdicts_from_file(args.corrections, index, hashes)
        source = f"file {Path(args.corrections).resolve()}"
    else:
        engine = store.make_engine(args.db)
        with store.make_sessionmaker(engine)() as s:
            verdicts = queries.latest_verdicts(s)
        engine.dispose()
        source = f"store {make_url(store.resolve_url(args.db)).render_as_string(hide_password=True)}"
    _, applied = apply_corrections(index, verdicts, hashes, allow_eval_relabel=args.allow_eval_relabel)
    return {"source": source, "verdicts": len(verdicts), "allow_eval_relabel": bool(args.allow_eval_relabel),
            **applied.to_dict()}


def replay(index: DatasetIndex, applied: dict[str, Any]) -> DatasetIndex:
    """``index`` with the relabels and drops of a recorded ``reviews_applied``; every listed image must be in it."""
    cindex = {c: i for i, c in enumerate(index.classes)}
    relabel = {(e["split"], e["relpath"]): e["new_label"] for e in applied.get("relabel_list", [])}
    drop = {(e["split"], e["relpath"]) for e in applied.get("drop_list", [])}
    unknown = [c for c in relabel.values() if c not in cindex]
    if unknown:
        raise ValueError(f"reviews_applied relabels to {sorted(set(unknown))}, not classes of this dataset")
    seen = set()
    splits = {}
    for split, samples in index.splits.items():
        kept = []
        for s in samples:
            key = (split, s.relpath)
            if key in drop:
                seen.add(key)
            elif key in relabel:
                seen.add(key)
                kept.append(dataclasses.replace(s, label=cindex[relabel[key]]))
            else:
                kept.append(s)
        splits[split] = kept
    missing = (set(relabel) | drop) - seen
    if missing:
        shown = ", ".join(f"{rel} ({sp})" for sp, rel in sorted(missing)[:5])
        raise ValueError(f"reviews_applied names {len(missing)} image(s) this dataset does not have: {shown}")
    return dataclasses.replace(index, splits=splits)


def apply_reviews(args: argparse.Namespace, index: DatasetIndex, env: dist.DistEnv) -> DatasetIndex:
    """``index`` corrected as ``--apply-reviews`` / ``--corrections`` say (rank 0 decides, every rank applies
    the same list); sets ``args.reviews_applied``, which the run's configuration records. Unchanged without
    those flags."""
    from core import dist

    if args.reviews_applied is None:
        if not (args.apply_reviews or args.corrections):
            return index
        plan = plan_corrections(args, index) if env.is_main else None
        args.reviews_applied = dist.broadcast_from_main(env, plan)
    applied = args.reviews_applied
    log.info("reviews from %s: %d relabelled, %d dropped, %d refused, %d verdict(s) without effect here",
             applied["source"], applied["relabelled"], applied["dropped"], applied["refused"], applied["ignored"])
    for e in applied.get("refused_list", []):
        log.warning("not relabelled: %s/%s %s -> %s (%s)", e["split"], e["relpath"], e["label"], e["new_label"],
                    e["why"])
    return replay(index, applied)
