"""Misclassifications: a filterable, paged gallery of errors with the predicted class's heatmap."""
import math

import streamlit as st

from core.cammaps import method_label
from dashboard import calibration_ui, loaders, reviews_ui, scale_ui, state
from dashboard.context import gallery_errors, require_run, split_choice
from dashboard.methods_ui import method_param, method_picker
from dashboard.tiles import TILES_PER_ROW, show_tiles

PAGE_SIZES = (25, 50, 100)

st.title("Misclassifications")
ctx = require_run()
preds = scale_ui.require_counts(ctx)  # predictions per split, counted in the store
reviews_ui.reviewer_sidebar()
names = list(ctx.names)
ss = st.session_state

with st.container(border=True):
    c1, c2, c0 = st.columns([2, 2, 1])
    state.seed("gal_true", "sport", [], valid=lambda v: all(x in names for x in v))
    true = c1.multiselect("True sport", names, key="gal_true", placeholder="any sport")
    state.seed("gal_pred", "pred", [], valid=lambda v: all(x in names for x in v))
    pred = c2.multiselect("Predicted sport", names, key="gal_pred", placeholder="any sport")
    method = method_picker(ctx, "gal_method", container=c0)
    c3, c4, c5 = st.columns([1, 2, 1])
    split_choice(ctx, preds, "gal_split", container=c3)
    state.seed("gal_conf", "conf", (0.0, 1.0), valid=lambda v: len(v) == 2 and 0 <= v[0] <= v[1] <= 1)
    conf = c4.slider("Confidence of the prediction", 0.0, 1.0, step=0.01, key="gal_conf")
    state.seed("gal_size", "_page_size", PAGE_SIZES[0], valid=lambda v: v in PAGE_SIZES)
    size = c5.selectbox("Per page", PAGE_SIZES, key="gal_size")
ss["sport"], ss["pred"], ss["conf"], ss["_page_size"] = true, pred, tuple(conf), size

# Raw confidences: filters, order and page are SQL (one page read, whatever the run's size). Calibrated ones
# come from each image's logits, so the filtered list is made in memory from the run's errors.
in_sql = calibration_ui.temperature(ctx.url, ctx.run_id) is None
index = {n: i for i, n in enumerate(names)}
split = ss.get("split", "all")
where = dict(splits=None if split == "all" else (split,), true=tuple(index[n] for n in true),
             pred=tuple(index[n] for n in pred), conf=(float(conf[0]), float(conf[1])))
errors = None if in_sql else gallery_errors(ctx)
n_match = scale_ui.load_errors_count(ctx.url, ctx.run_id, ctx.stamp, **where) if in_sql else len(errors)
total = int((preds["predictions"] - preds["correct"]).sum())
pages = max(1, math.ceil(n_match / size))

# A change of filter goes back to page 1.
signature = (tuple(true), tuple(pred), ss.get("split"), tuple(conf), size)
if ss.get("_gal_sig") != signature:
    if "_gal_sig" in ss:
        ss["page"] = 1
        ss.pop("gal_page", None)
    ss["_gal_sig"] = signature
state.seed("gal_page", "page", 1, valid=lambda v: isinstance(v, int) and 1 <= v <= pages)
if not 1 <= ss["gal_page"] <= pages:
    ss["gal_page"] = 1

st.markdown(f"**{n_match:,}** misclassified images match the filters (of {total:,} errors in all).")
if n_match == 0:
    state.publish(run=ctx.run_id, split=ss.get("split"), sport=true, pred=pred, conf=state.confidence_param(),
                  method=method_param())
    st.info("No misclassified image matches these filters." if total else "This run made no mistakes on these splits.")
    st.stop()

n1, n2 = st.columns([1, 4])
page = n1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, step=1, key="gal_page")
ss["page"] = int(page)
start = (int(page) - 1) * size
shown = (scale_ui.load_errors_page(ctx.url, ctx.run_id, ctx.stamp, offset=start, limit=size, **where) if in_sql
         else errors.iloc[start : start + size])
n2.caption(f"Showing {start + 1}–{start + len(shown)}, most confident mistakes first "
           f"({calibration_ui.word(ctx)} confidences). The overlay is the {method_label(method)} map of the "
           "predicted sport.")

chosen = show_tiles(ctx, shown, per_row=TILES_PER_ROW, key="gal_tile", notes=loaders.flag_notes(ctx.url, ctx.run_id),
                    review=True, method=method)
state.publish(run=ctx.run_id, split=ss.get("split"), sport=true, pred=pred, conf=state.confidence_param(),
              page=int(page), method=method_param())
if chosen is not None:
    ss["image"] = chosen
    st.switch_page("views/compare.py")
