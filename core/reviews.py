"""Verdicts on images and the corrections they make to a dataset.

A person looking at an image can say its label is wrong (and which class it is), that it is ambiguous, that
it is not a valid image at all (drop it), or that it is fine. A verdict is keyed by the sha256 of the image
file, so it follows the image across runs and copies of the data; the history of verdicts is append-only and
the latest one counts.

This module is torch- and SQL-free: the dashboard, ``jobs.reviews`` (CSV export/import) and ``jobs.train
--apply-reviews`` share it. ``apply_corrections`` turns the latest verdicts into a corrected dataset index.
"""
from __future__ import annotations

import csv
import dataclasses
import getpass
import hashlib
import io
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Optional, Sequence

if TYPE_CHECKING:  # core.data imports torch; the dashboard must not need it
    from core.data import DatasetIndex

RELABEL, AMBIGUOUS, DROP, FINE = "relabel", "ambiguous", "drop", "fine"
VERDICTS = (RELABEL, AMBIGUOUS, DROP, FINE)
VERDICT_LABELS = {
    RELABEL: "label wrong ->",
    AMBIGUOUS: "ambiguous",
    DROP: "not a valid image (drop it)",
    FINE: "fine",
}
CSV_COLUMNS = ("relpath", "split", "sha256", "label", "verdict", "new_label", "note", "reviewer", "reviewed_at")
MAX_NOTE = 2000
MAX_REVIEWER = 100
_HEX = set("0123456789abcdef")


class CorrectionsError(ValueError):
    """A corrections file that cannot be used; the message lists every bad line."""


def default_reviewer() -> str:
    """The operating-system user, the reviewer's name until one is typed."""
    try:
        return getpass.getuser()[:MAX_REVIEWER]
    except (KeyError, OSError):
        return os.environ.get("USER", "reviewer")[:MAX_REVIEWER] or "reviewer"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_sha256(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX


@dataclass(frozen=True)
class Verdict:
    """One verdict on one image. ``label`` is the class the image carried when it was judged; ``new_label``
    the class it should carry (``relabel`` only)."""

    sha256: str
    split: str
    relpath: str
    label: str
    verdict: str
    new_label: Optional[str] = None
    note: str = ""
    reviewer: str = ""
    reviewed_at: Optional[datetime] = None

    def __post_init__(self) -> None:
        check_verdict(self.verdict, self.new_label)
        if not is_sha256(self.sha256):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        if len(self.note) > MAX_NOTE:
            raise ValueError(f"a note holds at most {MAX_NOTE} characters, got {len(self.note)}")
        if len(self.reviewer) > MAX_REVIEWER:
            raise ValueError(f"a reviewer name holds at most {MAX_REVIEWER} characters, got {len(self.reviewer)}")

    def describe(self) -> str:
        if self.verdict == RELABEL:
            return f"label wrong: {self.label} -> {self.new_label}"
        return VERDICT_LABELS[self.verdict]


def check_verdict(verdict: str, new_label: Optional[str]) -> None:
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}")
    if verdict == RELABEL and not new_label:
        raise ValueError("a 'relabel' verdict needs the new label")
    if verdict != RELABEL and new_label:
        raise ValueError(f"only a 'relabel' verdict takes a new label, got {verdict!r} with {new_label!r}")


def latest(history: Iterable[Verdict]) -> dict[str, Verdict]:
    """The verdict that counts per image (the latest by time, the later one in ``history`` on ties)."""
    out: dict[str, Verdict] = {}
    epoch = datetime.min
    for v in history:
        cur = out.get(v.sha256)
        if cur is None or (v.reviewed_at or epoch) >= (cur.reviewed_at or epoch):
            out[v.sha256] = v
    return out


# --------------------------------------------------------------------------- CSV

def _fmt_time(t: Optional[datetime]) -> str:
    return t.replace(microsecond=0).isoformat() if t else ""


def write_csv(verdicts: Sequence[Verdict], fh: io.TextIOBase) -> int:
    """Write verdicts with the columns of ``CSV_COLUMNS``; returns the number of rows."""
    w = csv.writer(fh)
    w.writerow(CSV_COLUMNS)
    for v in verdicts:
        w.writerow([v.relpath, v.split, v.sha256, v.label, v.verdict, v.new_label or "", v.note, v.reviewer,
                    _fmt_time(v.reviewed_at)])
    return len(verdicts)


# (sha256, split, relpath) -> (sha256, split, relpath, label) of the image in the store, or None
FindImage = Callable[[str, str, str], Optional[tuple[str, str, str, str]]]


def read_csv(path: str | os.PathLike, classes: Sequence[str], find_image: FindImage,
             default_reviewer_name: str = "") -> list[Verdict]:
    """Parse and check a whole corrections file before anything is written.

    An image is found by ``sha256``, else by ``split`` and ``relpath``. Every problem (unknown class, unknown
    image, bad verdict, missing column, bad time) is collected with its line number; if there is any, a
    ``CorrectionsError`` lists them all and nothing is returned.
    """
    path = Path(path)
    known = set(classes)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorrectionsError(f"{path}: cannot be read as UTF-8 text ({exc})") from exc
    reader = csv.DictReader(io.StringIO(text))
    cols = [c.strip().lower() for c in reader.fieldnames or []]
    need = {"verdict"} | ({"sha256"} if "sha256" in cols else {"split", "relpath"})
    if not need <= set(cols):
        raise CorrectionsError(f"{path}: expected the columns {', '.join(CSV_COLUMNS)} "
                               f"(at least verdict, and sha256 or split and relpath); found {reader.fieldnames}")
    problems: list[str] = []
    out: list[Verdict] = []
    for lineno, raw in enumerate(reader, start=2):
        row = {k.strip().lower(): (val or "").strip() for k, val in raw.items() if k is not None}
        where = f"line {lineno}"
        verdict = row.get("verdict", "").lower()
        new_label = row.get("new_label") or None
        try:
            check_verdict(verdict, new_label)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if new_label and new_label not in known:
            problems.append(f"{where}: unknown class {new_label!r} in new_label")
            continue
        found = find_image(row.get("sha256", "").lower(), row.get("split", ""), row.get("relpath", ""))
        if found is None:
            ident = row.get("sha256") or f"{row.get('split', '')}/{row.get('relpath', '')}"
            problems.append(f"{where}: unknown image {ident!r} (not in the store by sha256, split and relpath)")
            continue
        sha, split, relpath, label = found
        when = None
        if row.get("reviewed_at"):
            try:
                when = datetime.fromisoformat(row["reviewed_at"])
                if when.tzinfo is not None:
                    when = when.astimezone(timezone.utc).replace(tzinfo=None)
            except ValueError:
                problems.append(f"{where}: reviewed_at {row['reviewed_at']!r} is not an ISO date and time")
                continue
        try:
            out.append(Verdict(sha, split, relpath, label, verdict, new_label, row.get("note", ""),
                               row.get("reviewer") or default_reviewer_name, when))
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
    if problems:
        shown = problems[:50] + ([f"... and {len(problems) - 50} more"] if len(problems) > 50 else [])
        raise CorrectionsError(f"{path}: {len(problems)} bad line(s), nothing was imported:\n  " + "\n  ".join(shown))
    return out


# --------------------------------------------------------------------------- applying

@dataclass(frozen=True)
class Applied:
    """What a training run took from the verdicts: counts and the list, as recorded in the run."""

    relabelled: list[dict]
    dropped: list[dict]
    refused: list[dict]  # eval-split relabels without --allow-eval-relabel
    ignored: int  # ambiguous/fine verdicts, and verdicts on images this dataset does not hold

    def to_dict(self) -> dict:
        return {"relabelled": len(self.relabelled), "dropped": len(self.dropped), "refused": len(self.refused),
                "ignored": self.ignored, "relabel_list": self.relabelled, "drop_list": self.dropped,
                "refused_list": self.refused}


def apply_corrections(index: "DatasetIndex", verdicts: dict[str, Verdict], hashes: dict[tuple[str, str], str],
                      *, allow_eval_relabel: bool = False) -> tuple["DatasetIndex", Applied]:
    """A copy of ``index`` with the latest verdicts applied: ``relabel`` changes the label, ``drop`` removes
    the image; ``ambiguous`` and ``fine`` change nothing.

    ``hashes`` maps (split, relpath) of the dataset's images to their sha256. Relabelling a valid or test
    image changes what the run's accuracy measures, so it is refused unless ``allow_eval_relabel``; drops
    apply to every split.
    """
    cindex = {c: i for i, c in enumerate(index.classes)}
    relabelled: list[dict] = []
    dropped: list[dict] = []
    refused: list[dict] = []
    used: set[str] = set()
    splits = {}
    for split, samples in index.splits.items():
        kept = []
        for s in samples:
            sha = hashes.get((split, s.relpath))
            v = verdicts.get(sha) if sha else None
            if v is None or v.verdict in (AMBIGUOUS, FINE):
                kept.append(s)
                continue
            used.add(sha)
            entry = {"split": split, "relpath": s.relpath, "sha256": sha, "label": index.classes[s.label],
                     "reviewer": v.reviewer}
            if v.verdict == DROP:
                dropped.append(entry)
                continue
            if v.new_label not in cindex:
                refused.append({**entry, "new_label": v.new_label, "why": "class not in this dataset"})
                kept.append(s)
            elif split != "train" and not allow_eval_relabel:
                refused.append({**entry, "new_label": v.new_label, "why": "evaluation split (--allow-eval-relabel)"})
                kept.append(s)
            else:
                relabelled.append({**entry, "new_label": v.new_label})
                kept.append(dataclasses.replace(s, label=cindex[v.new_label]))
        splits[split] = kept
    ignored = len(verdicts) - len(used)
    return dataclasses.replace(index, splits=splits), Applied(relabelled, dropped, refused, ignored)
