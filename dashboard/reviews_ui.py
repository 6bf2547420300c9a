"""Verdicts on images from any page that shows one: the reviewer's name, the verdict form, the history.

Reviews are the dashboard's only write. They go through a ``db.review_writer.ReviewWriter`` of their own,
cached per store, while every page reads through the read-only engine of ``loaders``. A page says "saved"
only after the write has committed and the verdict reads back through that read-only engine; a failed
write says so and keeps the form's content, and pressing Save again cannot store the verdict twice (the
submission's token is kept until it is saved). What reviewers type (names, notes) is shown as plain text
(``st.text``, ``st.dataframe``), never as Markdown or HTML.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import pandas as pd
import streamlit as st

from core import review_queue as rq
from core import reviews as rv
from dashboard import loaders
from dashboard.context import Ctx, job_command
from dashboard.state import seed
from db import queries
from db.queries import scale
from db.review_writer import ReviewWriter, new_token
from db.store import StoreError

REVIEWER_KEY = "sb_reviewer"
CHOICES = (rv.FINE, rv.RELABEL, rv.AMBIGUOUS, rv.DROP)
CHOICE_LABELS = {rv.FINE: "fine", rv.RELABEL: "label wrong → the class below", rv.AMBIGUOUS: "ambiguous",
                 rv.DROP: "not a valid image (drop it)"}
SHORT = {rv.FINE: "fine", rv.RELABEL: "relabel", rv.AMBIGUOUS: "ambiguous", rv.DROP: "drop"}


@dataclass(frozen=True)
class ReviewImage:
    """An image as a verdict names it: its file hash, where it is, and the class it carries in this run."""

    sha256: Optional[str]
    split: str
    relpath: str
    label: str
    image_id: Optional[int] = None


# --------------------------------------------------------------------------- reading

@st.cache_resource(show_spinner=False)
def writer(url: str) -> ReviewWriter:
    """The one writing engine of the dashboard, for reviews only."""
    return ReviewWriter(url)


@st.cache_data(ttl=2, show_spinner=False)
def load_stamp(url: str) -> str:
    """Changes when anyone adds a verdict; polled, so other sessions' verdicts show within seconds."""
    with loaders.session(url) as s:
        return queries.reviews_stamp(s)


@st.cache_data(show_spinner=False, max_entries=8)
def load_history(url: str, stamp: str) -> pd.DataFrame:
    with loaders.session(url) as s:
        return queries.review_history(s)


@st.cache_data(show_spinner=False, max_entries=8)
def load_latest(url: str, stamp: str) -> pd.DataFrame:
    """The verdict that counts per image, indexed by sha256."""
    with loaders.session(url) as s:
        return queries.latest_reviews(s).set_index("sha256", drop=False)


@st.cache_data(show_spinner=False, max_entries=64)
def load_shown_images(url: str, run_id: int, image_ids: tuple[int, ...], stamp: str) -> pd.DataFrame:
    """The images a page shows, by id (``db.queries.scale.images_by_id``: only those rows), indexed by id."""
    with loaders.session(url) as s:
        return scale.images_by_id(s, run_id, image_ids).set_index("image_id", drop=False)


@st.cache_data(show_spinner=False, max_entries=64)
def load_image_at(url: str, run_id: int, split: str, relpath: str, stamp: str) -> pd.DataFrame:
    """The run's image at ``split``/``relpath`` (0 or 1 row, ``db.queries.scale.image_by_path``)."""
    with loaders.session(url) as s:
        return scale.image_by_path(s, run_id, split, relpath)


@st.cache_data(show_spinner=False, max_entries=8)
def load_queue(url: str, run_id: int, stamp: str, audit_stamp: Optional[str]) -> pd.DataFrame:
    """The run's review queue (``core.review_queue.build_queue``) with each image's sha256."""
    info = loaders.load_run(url, run_id, stamp)
    preds = loaders.load_predictions(url, run_id, stamp)
    report = loaders.load_audit(url, run_id, audit_stamp)
    queue = rq.build_queue(info.classes, predictions=preds, report=report)
    with loaders.session(url) as s:  # the hashes of the queued images only, not of the run's (train) images
        hashes = scale.images_by_id(s, run_id, queue["image_id"]).set_index("image_id")["sha256"]
    return queue.assign(sha256=queue["image_id"].map(hashes))


def latest(url: str) -> pd.DataFrame:
    return load_latest(url, load_stamp(url))


def history_of(url: str, sha256: str) -> pd.DataFrame:
    hist = load_history(url, load_stamp(url))
    return hist[hist["sha256"] == sha256]


def _review_image(ctx: Ctx, row) -> ReviewImage:
    sha = row["sha256"] if isinstance(row["sha256"], str) else None
    label = int(row["label"])
    name = ctx.names[label] if 0 <= label < len(ctx.names) else f"class {label}"
    return ReviewImage(sha, row["split"], row["relpath"], name, int(row["image_id"]))


def images_for(ctx: Ctx, image_ids) -> dict[int, ReviewImage]:
    """The shown run's images among ``image_ids``, by id (one read for a page of tiles)."""
    ids = tuple(sorted({int(i) for i in image_ids}))
    if not ids:
        return {}
    rows = load_shown_images(ctx.url, ctx.run_id, ids, ctx.stamp)
    return {int(i): _review_image(ctx, row) for i, row in rows.iterrows()}


def image_for(ctx: Ctx, image_id: Optional[int] = None, *, split: Optional[str] = None,
              relpath: Optional[str] = None) -> Optional[ReviewImage]:
    """An image of the shown run by id, else by split and relpath; ``None`` when the run has no such image.
    Reads that one image's row, never the run's images."""
    if image_id is not None:
        found = images_for(ctx, [image_id]).get(int(image_id))
        if found is not None:
            return found
    if split is None or relpath is None:
        return None
    hit = load_image_at(ctx.url, ctx.run_id, split, relpath, ctx.stamp)
    return _review_image(ctx, hit.iloc[0]) if len(hit) else None


def describe(row) -> str:
    """A verdict row in words (class names and fixed words only: safe anywhere)."""
    if row["verdict"] == rv.RELABEL:
        return f"label wrong: {row['label']} -> {row['new_label']}"
    return rv.VERDICT_LABELS.get(row["verdict"], str(row["verdict"]))


def current(url: str, sha256: Optional[str]):
    """The verdict that counts for an image (a row of ``latest``), or ``None``."""
    if not sha256:
        return None
    lat = latest(url)
    return lat.loc[sha256] if sha256 in lat.index else None


# --------------------------------------------------------------------------- the reviewer

def reviewer_sidebar() -> str:
    """The reviewer's name, a sidebar text field starting at the OS user; draw once per page."""
    seed(REVIEWER_KEY, "reviewer", rv.default_reviewer())
    name = st.sidebar.text_input("Reviewer", key=REVIEWER_KEY, max_chars=rv.MAX_REVIEWER,
                                 help="Your verdicts are recorded under this name.")
    st.session_state["reviewer"] = name
    return name


def reviewer() -> str:
    return str(st.session_state.get("reviewer", rv.default_reviewer())).strip()


# --------------------------------------------------------------------------- writing

def _fingerprint(v: rv.Verdict) -> str:
    return hashlib.sha256("\x1f".join([v.sha256, v.verdict, v.new_label or "", v.note, v.reviewer]).encode()).hexdigest()


def submit(url: str, image: ReviewImage, verdict: str, new_label: Optional[str], note: str,
           key: str) -> tuple[bool, str]:
    """Write one verdict; ``(True, message)`` once it committed and reads back, ``(False, why)`` otherwise."""
    name = reviewer()
    if not name:
        return False, "Type your name in the sidebar (Reviewer) first; nothing was saved."
    if not image.sha256:
        return False, "This image has no recorded file hash, so a verdict cannot follow it; nothing was saved."
    if verdict == rv.RELABEL and new_label == image.label:
        return False, f"The image is already labelled {image.label}; pick the class it should carry."
    try:
        v = rv.Verdict(image.sha256, image.split, image.relpath, image.label, verdict,
                       new_label if verdict == rv.RELABEL else None, note, name)
    except ValueError as exc:
        return False, f"Not saved: {exc}"
    # One token per submission, kept until it is saved: pressing Save again after an unclear failure
    # finds the row the first attempt wrote instead of adding a second one.
    pending = st.session_state.setdefault("_rv_pending", {})
    fp = _fingerprint(v)
    if pending.get(key, (None, None))[0] != fp:
        pending[key] = (fp, new_token())
    try:
        row_id = writer(url).save_one(v, token=pending[key][1])
    except StoreError as exc:
        return False, f"Not saved: {exc}. Press Save again."
    load_stamp.clear()
    with loaders.session(url) as s:  # read back through the page's own, read-only connection
        stored = row_id in set(queries.review_history(s, [v.sha256])["id"])
    if not stored:
        return False, "Not saved: the store does not show the verdict after writing it. Press Save again."
    pending.pop(key, None)
    return True, f"Saved: {describe({'verdict': v.verdict, 'label': v.label, 'new_label': v.new_label})} " \
                 f"for {image.relpath}."


def flash(ok: bool, message: str) -> None:
    """A result to show on the next run of the page (after a callback that changes what the page shows)."""
    st.session_state["_rv_flash"] = (ok, message)


def show_flash() -> None:
    got = st.session_state.pop("_rv_flash", None)
    if got is not None:
        (st.success if got[0] else st.error)(got[1])


# --------------------------------------------------------------------------- widgets

def show_history(url: str, image: ReviewImage, *, key: str) -> None:
    """The verdict that counts (as plain text) and, when there are several, the whole history as a table."""
    if not image.sha256:
        st.caption("No file hash recorded for this image: it cannot be reviewed "
                   f"(`{job_command('cams', url, '--run RUN')}` records the hashes of an older run).")
        return
    hist = history_of(url, image.sha256)
    cur = current(url, image.sha256)
    if cur is None:
        st.caption("Not reviewed yet.")
        return
    when = pd.Timestamp(cur["created_at"]).strftime("%Y-%m-%d %H:%M")
    st.text(f"Current verdict: {describe(cur)} (by {cur['reviewer']}, {when} UTC)")
    if cur["note"]:
        st.text(f"Note: {cur['note']}")
    if len(hist) > 1:
        with st.expander(f"History ({len(hist)} verdicts)"):
            st.dataframe(hist.sort_values(["created_at", "id"], ascending=False)[
                ["created_at", "reviewer", "verdict", "new_label", "note"]], hide_index=True, key=f"{key}_hist")


def verdict_form(ctx: Ctx, image: Optional[ReviewImage], *, key: str, suggest: Optional[str] = None) -> bool:
    """The current verdict and history of ``image`` and a form for a new one; True when one was saved now."""
    if image is None:
        st.caption("This image is not in the run.")
        return False
    show_history(ctx.url, image, key=key)
    if not image.sha256:
        return False
    others = [n for n in ctx.names if n != image.label]
    with st.form(key, border=True):
        choice = st.radio("Verdict", CHOICES, format_func=CHOICE_LABELS.get, horizontal=True, key=f"{key}_v")
        new = st.selectbox("The class it should carry (for 'label wrong')", others, key=f"{key}_c",
                           index=others.index(suggest) if suggest in others else 0)
        note = st.text_area("Note (optional)", max_chars=rv.MAX_NOTE, key=f"{key}_n", height=68)
        pressed = st.form_submit_button("Save verdict", type="primary")
    if not pressed:
        return False
    ok, message = submit(ctx.url, image, choice, new, note, key)
    (st.success if ok else st.error)(message)
    return ok


def tile_review(ctx: Ctx, image: Optional[ReviewImage], *, key: str, suggest: Optional[str] = None) -> None:
    """A small "Review" popover under an image tile: its verdict and the form."""
    if image is None or not image.sha256:
        return
    cur = current(ctx.url, image.sha256)
    label = "Review" if cur is None else f"Reviewed: {SHORT.get(cur['verdict'], cur['verdict'])}"
    with st.popover(label, width="stretch"):
        verdict_form(ctx, image, key=key, suggest=suggest)


def quick_buttons(ctx: Ctx, image: ReviewImage, *, class_key: str, note_key: str,
                  after: Callable[[bool], None]) -> None:
    """One button per verdict with a keyboard shortcut (F, L, A, D), each saving at once; ``after(saved)``
    runs once the write is done (the queue moves on)."""

    def press(verdict: str) -> None:
        ss = st.session_state
        ok, message = submit(ctx.url, image, verdict, ss.get(class_key), ss.get(note_key, "") or "",
                             f"quick_{image.sha256}")
        flash(ok, message)
        after(ok)

    cols = st.columns(4)
    specs = [(rv.FINE, "Fine", "F"), (rv.RELABEL, "Label wrong", "L"), (rv.AMBIGUOUS, "Ambiguous", "A"),
             (rv.DROP, "Not a valid image", "D")]
    for col, (verdict, text, keyname) in zip(cols, specs):
        col.button(text, key=f"rq_{verdict}", on_click=press, args=(verdict,), shortcut=keyname, width="stretch",
                   type="primary" if verdict == rv.FINE else "secondary")
