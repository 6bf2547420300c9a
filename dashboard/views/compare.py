"""Heatmap comparison: one image as the model saw it, with the maps of its predicted and true class, and every
stored CAM method side by side for the predicted class, the true class and their contrast."""
import numpy as np
import streamlit as st

from core.cammaps import COLORMAPS, DEFAULT_ALPHA, DEFAULT_COLORMAP, method_label
from core.figures import top5_bars
from dashboard import calibration_ui, loaders, reviews_ui, scale_ui, state
from dashboard.context import gallery_errors, require_run
from dashboard.methods_ui import method_param, method_picker, method_rows
from dashboard.tiles import map_of_class, picture, show_colorbar, show_picture
from dashboard.charts import chart
from dashboard.lookalikes_ui import looks_like_these

st.title("Heatmap comparison")
ctx = require_run()
scale_ui.require_counts(ctx)  # stops with a message when the run has no predictions
reviews_ui.reviewer_sidebar()
names = ctx.names
ss = st.session_state

# Previous / Next walk the gallery's current filter. Raw confidences: the store finds the image's place and
# neighbours in that order (a few indexed reads); calibrated ones come from each image's logits, so the
# filtered list is made in memory from the run's errors, as the gallery does.
image_id = ss.get("image")
chosen = loaders.load_detail(ctx.url, ctx.run_id, image_id, ctx.stamp) if isinstance(image_id, int) else None
if calibration_ui.in_store(ctx):  # the gallery's own rule: its list is in SQL
    where = scale_ui.gallery_where(ctx)
    n_match = scale_ui.load_errors_count(ctx.url, ctx.run_id, ctx.stamp, **where)
    if chosen is None or chosen.pred is None:
        top = scale_ui.load_errors_page(ctx.url, ctx.run_id, ctx.stamp, offset=0, limit=1, **where)
        image_id = int(top["image_id"].iloc[0]) if len(top) else None
    near = (scale_ui.load_neighbours(ctx.url, ctx.run_id, ctx.stamp, image_id, **where) if image_id is not None
            else None)
    pos, prev_id, next_id, first_id = ((near.position, near.previous, near.next, near.first) if near is not None
                                       else (None, None, None, None))
else:
    ids = [int(i) for i in gallery_errors(ctx)["image_id"]]
    n_match = len(ids)
    if (chosen is None or chosen.pred is None) and ids:
        image_id = ids[0]
    pos = ids.index(image_id) if image_id in ids else None
    prev_id = ids[pos - 1] if pos else None
    next_id = ids[pos + 1] if pos is not None and pos + 1 < n_match else None
    first_id = ids[0] if ids else None
if image_id is None:  # no image chosen, or one without a prediction in this run, and nothing matches
    st.info("No image chosen and no misclassified image matches the gallery filters. "
            "Pick one in the Misclassifications page, or relax its filters.")
    st.stop()


def _go(target: int) -> None:
    ss["image"] = target


ss["image"] = image_id
# outside the filter, both buttons start at its first image
back, ahead = (first_id, first_id) if pos is None else (prev_id, next_id)
b1, b2, b3 = st.columns([1, 1, 4])
b1.button("◀ Previous", key="cmp_prev", on_click=_go, args=(back,), disabled=back is None, width="stretch")
b2.button("Next ▶", key="cmp_next", on_click=_go, args=(ahead,), disabled=ahead is None, width="stretch")
b3.caption(
    f"Image {pos + 1} of {n_match} in the gallery's current filter." if pos is not None
    else "This image is outside the gallery's current filter; Previous/Next start at its first image."
)

with st.container(border=True):
    c0, c1, c2, c3 = st.columns([1, 1, 1, 1.4])
    chosen_method = method_picker(ctx, "cmp_method", container=c0)
    alpha = c1.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_ALPHA, 0.05, key="cmp_alpha")
    colormap = c2.selectbox("Colormap", list(COLORMAPS), index=list(COLORMAPS).index(DEFAULT_COLORMAP), key="cmp_cmap")
    norm = c3.radio("Scale", ["per image", "shared across both maps", "none (raw values)"], key="cmp_norm",
                    horizontal=True)

d = loaders.load_detail(ctx.url, ctx.run_id, image_id, ctx.stamp, chosen_method)
if d is None or d.pred is None:
    st.error(f"Image {image_id} has no prediction in run #{ctx.run_id}.")
    st.stop()

verdict = "correct" if d.pred == d.label else "wrong"
# The sidebar switch: the calibrated top 5 (softmax of the stored logits over T), else the stored raw one.
calibrated = calibration_ui.top5(ctx, image_id)
confidence, top_idx, top_prob = calibrated if calibrated is not None else (d.confidence, d.top5_idx, d.top5_prob)
st.markdown(
    f"**{d.relpath}** ({d.split}) · true **{names[d.label]}** · predicted **{names[d.pred]}** "
    f"at {confidence:.1%}{' calibrated' if calibrated is not None else ''} · {verdict}"
    + (f" · loss {d.loss:.3f}" if d.loss is not None else "")
)

size = ctx.info.image_size
method = method_label(chosen_method)
cam_pred = map_of_class(d.maps, d.pred)
cam_true = map_of_class(d.maps, d.label)
shown = [c for c in (cam_pred, cam_true) if c is not None]
if norm.startswith("shared") and shown:
    normalize = ("fixed", float(max(np.maximum(c, 0).max() for c in shown)))
elif norm.startswith("none"):
    normalize = "none"
else:
    normalize = "image"


def view(cam):
    return picture(ctx, d.relpath, size, cam, colormap=colormap, alpha=alpha, normalize=normalize)


def show(col, title, pic, missing=None):
    # The title goes under the image: a long class name then wraps below it, and the images stay aligned.
    with col:
        if missing:
            st.info(missing)
        else:
            show_picture(pic)
        st.markdown(f"**{title}**")


c1, c2, c3, c4 = st.columns([1, 1, 1, 1.2])
show(c1, f"Model input ({size}×{size})", view(None))
show(c2, f"{method}: predicted · {names[d.pred]}", view(cam_pred),
     None if cam_pred is not None else "No map stored for the predicted class.")
if d.pred == d.label:
    show(c3, f"{method}: true · {names[d.label]}", None, "Prediction is correct: the true class's map is the one to its left.")
else:
    show(c3, f"{method}: true · {names[d.label]}", view(cam_true),
         None if cam_true is not None else "No map stored for the true class.")
with c4:
    chart(top5_bars(names, top_prob, label=d.label, idx=top_idx), key="cmp_top5", name=f"top5-{d.relpath}")
    st.caption(f"Top-5 probabilities, {calibration_ui.word(ctx)}.")
if shown and norm.startswith("none"):
    lo, hi = min(float(c.min()) for c in shown), max(float(c.max()) for c in shown)
    show_colorbar(colormap, low="0", high="1", note=f"raw map values (they span {lo:.3g}–{hi:.3g}; above 1 saturates)")
elif shown and norm.startswith("shared"):
    show_colorbar(colormap, low="0", high=f"{normalize[1]:.3g}", note="raw map values, one scale for both maps")
else:
    show_colorbar(colormap, note="each map scaled to its own peak")

with st.container(border=True):
    st.markdown("**Your verdict on this image**")
    reviews_ui.verdict_form(ctx, reviews_ui.image_for(ctx, image_id), key=f"cmp_review_{image_id}",
                            suggest=names[d.pred] if d.pred != d.label else None)
st.subheader("Every stored method side by side")
row_scale = st.radio("Colour scale of a row", ["one scale for the row", "each map to its own peak"],
                     key="cmp_row_scale", horizontal=True,
                     help="One scale compares the raw values of the methods (a colour bar under the row); "
                     "the methods differ in magnitude, so each map's own peak shows its shape instead.")
st.caption("The contrast row explains the predicted class's logit minus the true class's: what made the model "
           "choose its answer rather than the right one. A right prediction has one row.")
method_rows(ctx, d, colormap=colormap, alpha=alpha, shared=row_scale.startswith("one"))

picked = looks_like_these(ctx, image_id, d.label, d.pred, key="cmp_lk")
if picked is not None:
    ss["image"] = picked
    st.rerun()

state.publish(run=ctx.run_id, image=image_id, split=ss.get("split"), sport=ss.get("sport", []),
              pred=ss.get("pred", []), conf=state.confidence_param(), method=method_param())
