"""What the "Try an image" page is made of: the run's model loaded once, the images to try (uploads read in
memory, or a file of the run's data), the predictions kept for the session, and the drawing of one result.

This is the one part of the dashboard that runs the model. ``core.inference`` (and with it torch) is imported
inside the functions that need it, so importing this module, like every other page, stays free of torch.
Uploaded bytes live in the session's memory only: they are never written to disk and go when the session
does (the predictions are kept in ``st.session_state``, never in a cache shared between sessions).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pandas as pd
import streamlit as st

from core.cammaps import COLORMAPS, DEFAULT_ALPHA, DEFAULT_COLORMAP, GRADIENT_METHODS, METHOD_LABELS
from core.images import BadImage, open_rgb, safe_image_path
from core.tryout import (PICKED, SCALES, TOP1, NoCheckpoint, bundle, checkpoint_stamp, decode_image, find_checkpoint,
                         overlays, result_record, result_sheet, top_table)
from core.lookalikes import candidates
from core.splits import TRAIN
from dashboard import calibration_ui, embedding, loaders
from dashboard.context import Ctx
from dashboard.tiles import show_colorbar
from db import queries

UPLOAD_TYPES = ["jpg", "jpeg", "png", "webp"]
KEPT_RESULTS = 32  # predictions kept per session, newest first out when full
COLLECTED_KEY = "try_collected"
RESULTS_KEY = "try_results"
NO_CLASS = "(none: the top-1 class only)"
NEIGHBOURS_K = 5
COMPARE_PAGE = "views/compare.py"


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------
@dataclass
class Loaded:
    """A run's predictor and the lock that lets one session at a time use it (sessions share it)."""

    predictor: Any  # core.inference.Predictor
    lock: threading.Lock
    path: str
    stamp: float
    layer: Optional[str]

    @property
    def key(self) -> tuple:
        return self.path, self.stamp, self.layer


@st.cache_resource(show_spinner="Loading the run's model…", max_entries=2)
def _load(path: str, stamp: float, layer: Optional[str]) -> Loaded:
    """The checkpoint at ``path``, loaded once per file version (``stamp``: its modification time), its maps
    taken at ``layer`` (the run's CAM layer; ``None``: the checkpoint's)."""
    from core.inference import Predictor  # torch, for this page only

    return Loaded(Predictor(path, layer=layer), threading.Lock(), path, stamp, layer)


def one_line(text: str, limit: int = 300) -> str:
    first = str(text).strip().splitlines()[0] if str(text).strip() else str(text)
    return first if len(first) <= limit else first[: limit - 1] + "…"


def predictor_for(info: queries.RunInfo) -> Loaded | str:
    """The run's model, or one line saying why there is none (checkpoint gone, unreadable, of other classes)."""
    label = f"Run #{info.id} ({info.name})"
    try:
        path = find_checkpoint(info.checkpoint_path, info.config, label)
        loaded = _load(str(path), checkpoint_stamp(path), info.cam_layer)
    except NoCheckpoint as exc:
        return one_line(f"{exc}; this page needs the run's model to try images.")
    except (ValueError, OSError) as exc:  # core.model.CheckpointError is a ValueError
        return one_line(f"{label}: cannot load its model: {exc}")
    if tuple(loaded.predictor.classes) != tuple(info.classes):
        return one_line(f"{label}: the checkpoint {path} has {len(loaded.predictor.classes)} classes that differ "
                        f"from the run's {len(info.classes)}; it is not this run's model.")
    return loaded


# --------------------------------------------------------------------------------------------------
# The images to try
# --------------------------------------------------------------------------------------------------
@dataclass
class Item:
    """One image to try: ``image`` decoded, or ``error`` the one line that says why not."""

    key: str  # content hash of an upload, or the data file's path: the cache key of its prediction
    name: str
    source: str  # "upload", or the file's path relative to the data root
    image: Any = None  # PIL.Image.Image
    error: Optional[str] = None


def upload_limit_mb() -> int:
    """The upload limit per file, in MB (``server.maxUploadSize`` of ``.streamlit/config.toml``)."""
    return int(st.get_option("server.maxUploadSize"))


def upload_items(files: Sequence[Any], image_size: int, max_bytes: Optional[int] = None) -> list[Item]:
    """Decode uploaded files (anything with ``.name`` and ``.getvalue()``) from memory; a bad one becomes an
    ``Item`` with its one-line reason. The upload limit is checked here too, not only by the browser."""
    max_bytes = max_bytes if max_bytes is not None else upload_limit_mb() * 1_000_000
    items = []
    for f in files:
        data = f.getvalue()
        key = "upload:" + hashlib.sha256(data).hexdigest()
        try:
            items.append(Item(key, f.name, "upload", image=decode_image(data, f.name, max_bytes, image_size)))
        except BadImage as exc:
            items.append(Item(key, f.name, "upload", error=one_line(str(exc))))
    return items


def data_item(data_root: str, relpath: str) -> Item:
    """A file of the run's data, decoded as evaluation decodes it (the path checked against the data root)."""
    key = "data:" + relpath
    try:
        return Item(key, relpath, relpath, image=open_rgb(safe_image_path(data_root, relpath)))
    except (ValueError, OSError) as exc:  # BadImage, a path outside the root, a missing file
        return Item(key, relpath, relpath, error=one_line(f"{relpath}: {exc}"))


@st.cache_data(show_spinner=False, max_entries=8)
def load_images(url: str, run_id: int, stamp: str) -> pd.DataFrame:
    """The run's usable images (every split), for the pick by sport and file."""
    with loaders.session(url) as s:
        frame = queries.images_frame(s, run_id)
    return frame.loc[~frame["skipped"], ["image_id", "split", "relpath", "label"]].reset_index(drop=True)


def data_picker(ctx: Ctx, container=st) -> Optional[str]:
    """Sport and file selectors over the run's images; the chosen file's path, or ``None``."""
    images = load_images(ctx.url, ctx.run_id, ctx.stamp)
    names = list(ctx.names)
    present = sorted(set(int(v) for v in images["label"]))
    sports = ["(none)"] + [names[i] for i in present]
    sport = container.selectbox("Sport", sports, key="try_sport")
    if sport == "(none)":
        return None
    files = images.loc[images["label"] == names.index(sport), "relpath"].tolist()
    return container.selectbox(f"File ({len(files)} of this sport)", files, key="try_file")


# --------------------------------------------------------------------------------------------------
# Predictions, kept for the session
# --------------------------------------------------------------------------------------------------
def predict(loaded: Loaded, items: Sequence[Item], methods: Sequence[str], picked: Optional[int]) -> dict[str, Any]:
    """``{item.key: TryResult}`` of the decoded items, computed once per (model, image, methods, class) and
    kept in this session's state only."""
    kept: OrderedDict = st.session_state.setdefault(RESULTS_KEY, OrderedDict())
    methods = tuple(methods)

    def key(item: Item) -> tuple:
        return (*loaded.key, item.key, methods, picked)

    todo = [it for it in items if it.image is not None and key(it) not in kept]
    if todo:
        with loaded.lock:
            results = loaded.predictor.predict([it.image for it in todo], [it.name for it in todo], methods=methods,
                                               picked=picked)
        for it, r in zip(todo, results):
            kept[key(it)] = r
    out = {}
    for it in items:
        if it.image is not None:
            kept.move_to_end(key(it))
            out[it.key] = kept[key(it)]
    while len(kept) > KEPT_RESULTS:
        kept.popitem(last=False)
    return out


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class View:
    colormap: str = DEFAULT_COLORMAP
    alpha: float = DEFAULT_ALPHA
    scale: str = SCALES[0]


def controls(classes: Sequence[str]) -> tuple[list[str], Optional[int], View]:
    """Methods, the class to explain besides the top-1, and the overlay options (as on the comparison page)."""
    with st.container(border=True):
        c1, c2 = st.columns(2)
        methods = c1.multiselect("Methods", list(GRADIENT_METHODS), default=list(GRADIENT_METHODS),
                                 format_func=lambda m: METHOD_LABELS.get(m, m), key="try_methods")
        choice = c2.selectbox("Also explain the class", [NO_CLASS] + list(classes), key="try_class")
        c3, c4, c5 = st.columns(3)
        alpha = c3.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_ALPHA, 0.05, key="try_alpha")
        colormap = c4.selectbox("Colormap", list(COLORMAPS), index=list(COLORMAPS).index(DEFAULT_COLORMAP),
                                key="try_cmap")
        scale = c5.radio("Scale", list(SCALES), key="try_scale", horizontal=True)
    picked = None if choice == NO_CLASS else list(classes).index(choice)
    return methods, picked, View(colormap, alpha, scale)


def top_frame(result, classes: Sequence[str], temperature: Optional[float]) -> pd.DataFrame:
    rows = top_table(result, classes, temperature)
    frame = pd.DataFrame(rows).set_index("rank")
    frame = frame.rename(columns={"probability": "probability (T = 1)" if temperature else "probability"})
    if temperature:
        frame = frame.rename(columns={"calibrated": f"calibrated (T = {temperature:.2f})"})
    return frame.drop(columns=["index"])


def stored_line(ctx: Ctx, relpath: str) -> Optional[str]:
    """What the run stored for a file of its data, to set beside the page's own prediction."""
    preds = loaders.load_predictions(ctx.url, ctx.run_id, ctx.stamp)
    row = preds.loc[preds["relpath"] == relpath]
    if row.empty:
        return None
    r = row.iloc[0]
    return (f"The run stored for this file ({r['split']}): true **{ctx.names[int(r['label'])]}**, predicted "
            f"**{ctx.names[int(r['pred'])]}** at {float(r['confidence']):.1%}.")


def show_result(result, classes: Sequence[str], methods: Sequence[str], view: View, *,
                temperature: Optional[float], note: Optional[str] = None) -> None:
    """One image: its top-k, the model's view and every method's map of the top-1 and of the picked class."""
    top1 = result.top_idx[0]
    head = f"**{result.name}** · top-1 **{classes[top1]}** at {result.top_prob[0]:.1%}"
    if temperature:
        head += f" (calibrated {float(result.calibrated(temperature)[top1]):.1%})"
    st.markdown(head)
    if note:
        st.markdown(note)
    left, right = st.columns([1, 2])
    with left:
        st.image(result.pixels, caption=f"Model input ({result.pixels.shape[1]}×{result.pixels.shape[0]})",
                 width="stretch")
    with right:
        frame = top_frame(result, classes, temperature)
        bars = {c: st.column_config.ProgressColumn(c, format="percent", min_value=0.0, max_value=1.0)
                for c in frame.columns if c != "class"}
        st.dataframe(frame, width="stretch", column_config=bars)
        if temperature:
            st.caption(f"Calibrated: softmax(logits / T) with the temperature T = {temperature:.3g} that "
                       "`jobs.calibrate` fitted on the run's validation split.")
        else:
            st.caption("Raw softmax probabilities: the run has no fitted temperature (`python -m jobs.calibrate`), "
                       "so none are calibrated.")
    rows = [(TOP1, f"top-1 · {classes[top1]}")]
    if result.picked is not None:
        rows.append((PICKED, f"{classes[result.picked]} ({float(result.probs[result.picked]):.1%})"))
    for which, label in rows:
        views = overlays(result, which, methods, colormap=view.colormap, alpha=view.alpha, scale=view.scale)
        cols = st.columns(max(1, len(views)))
        for col, (m, im) in zip(cols, views):
            col.image(im, caption=f"{METHOD_LABELS.get(m, m)} · {label}", width="stretch")
    show_colorbar(view.colormap, note="each map scaled to its own peak" if view.scale == SCALES[0] else
                  f"map values, {view.scale}")


def nearest_images(ctx: Ctx, result, *, key: str, k: int = NEIGHBOURS_K) -> None:
    """The stored images whose feature vectors are most like the tried image's (cosine similarity): the
    training images when the run has their vectors, else every image that has one. A *Compare* button of a
    predicted image opens it on the comparison page."""
    st.markdown("**Nearest images of the run's data**")
    hint = embedding.embed_hint(ctx)
    stamp = embedding.load_embed_stamp(ctx.url, ctx.run_id)
    vecs = embedding.load_vectors(ctx.url, ctx.run_id, stamp) if stamp is not None else None
    if vecs is None or len(vecs.images) == 0:
        st.caption(f"The nearest images appear once the run's feature vectors are stored: {hint}.")
        return
    if result.features is None or vecs.index.dim != len(result.features):
        mine = 0 if result.features is None else len(result.features)
        st.caption(f"The run's stored vectors have {vecs.index.dim} values, this model's {mine}: they come from "
                   f"another model. Compute them again with {hint}.")
        return
    has_train = TRAIN in vecs.splits()
    rows, sims = vecs.index.search(result.features, k, among=candidates(vecs.images, (TRAIN,) if has_train else None))
    table = vecs.images.iloc[rows[0]].reset_index(drop=True)
    st.caption(f"The {len(table)} images whose feature vectors (the input of the classifier) are most like this "
               "one's, by cosine similarity, " + ("from the training set." if has_train else
               f"from every split: no training image has a vector yet ({hint} computes them)."))
    extra = {int(i): f"similarity {float(v):.3f}" for i, v in zip(table["image_id"], sims[0])}
    chosen = embedding.image_grid(ctx, table, key=f"try_nb_{key}", extra=extra)
    if chosen is not None:
        st.session_state["image"] = chosen
        st.switch_page(COMPARE_PAGE)


def collect(result, record: dict) -> int:
    """Add a result to the session's download (once per image and settings); returns how many it holds."""
    bag: dict = st.session_state.setdefault(COLLECTED_KEY, {})
    bag[(record["name"], record["source"], tuple(record["methods"]), str(record["picked"]))] = (result, record)
    return len(bag)


def collected_download(ctx: Ctx, view: View) -> None:
    """The download of the collected results (``predictions.json`` and ``sheet.png`` in a zip), and a reset."""
    bag: dict = st.session_state.get(COLLECTED_KEY, {})
    if not bag:
        st.caption("Press *Add to download* under a result to collect it into a zip (PNG sheet + JSON).")
        return
    results = [r for r, _ in bag.values()]
    records = [rec for _, rec in bag.values()]

    def build() -> bytes:
        sheet = result_sheet(results, ctx.names, title=f"Run #{ctx.run_id} {ctx.info.name}: tried images",
                             colormap=view.colormap, alpha=view.alpha)
        return bundle(records, sheet, run={"id": ctx.run_id, "name": ctx.info.name})

    c1, c2, _ = st.columns([2, 1, 3])
    c1.download_button(f"Download {len(bag)} result{'s' if len(bag) != 1 else ''} (PNG sheet + JSON)", data=build,
                       file_name=f"tried-images-run{ctx.run_id}.zip", mime="application/zip", key="try_download",
                       on_click="ignore", icon=":material/download:")
    if c2.button("Clear", key="try_clear"):
        st.session_state[COLLECTED_KEY] = {}
        st.rerun()


def record_of(result, classes: Sequence[str], item: Item, temperature: Optional[float]) -> dict:
    return result_record(result, classes, temperature=temperature, source=item.source)


def run_temperature(ctx: Ctx) -> Optional[float]:
    """The temperature ``jobs.calibrate`` fitted on the run's validation logits; ``None`` when the run has none."""
    stamp = calibration_ui.load_calibration_stamp(ctx.url, ctx.run_id)
    cal = calibration_ui.load_calibration(ctx.url, ctx.run_id, stamp)
    return None if cal is None else float(cal.temperature)
