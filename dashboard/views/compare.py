"""Heatmap comparison: one image as the model saw it, with the Grad-CAM of its predicted and true class."""
import numpy as np
import streamlit as st

from core.cammaps import COLORMAPS, DEFAULT_ALPHA, DEFAULT_COLORMAP, DEFAULT_METHOD, METHOD_LABELS
from core.figures import top5_bars
from dashboard import loaders, state
from dashboard.context import gallery_errors, require_predictions, require_run
from dashboard.tiles import map_of_class, picture, show_colorbar, show_picture
from dashboard.charts import chart

st.title("Heatmap comparison")
ctx = require_run()
preds = require_predictions(ctx)
names = ctx.names
ss = st.session_state

errors = gallery_errors(ctx)
ids = [int(i) for i in errors["image_id"]]
known = set(int(i) for i in preds["image_id"])
image_id = ss.get("image")
if image_id not in known:
    if not ids:
        st.info("No image chosen and no misclassified image matches the gallery filters. "
                "Pick one in the Misclassifications page, or relax its filters.")
        st.stop()
    image_id = ids[0]

# Previous / next walk the gallery's current filter.
def _step(delta: int) -> None:
    cur = ss.get("image")
    at = ids.index(cur) if cur in ids else None
    ss["image"] = ids[0] if at is None else ids[max(0, min(len(ids) - 1, at + delta))]


ss["image"] = image_id
pos = ids.index(image_id) if image_id in ids else None
b1, b2, b3 = st.columns([1, 1, 4])
b1.button("◀ Previous", key="cmp_prev", on_click=_step, args=(-1,), disabled=not ids or pos == 0, width="stretch")
b2.button("Next ▶", key="cmp_next", on_click=_step, args=(1,),
          disabled=not ids or (pos is not None and pos >= len(ids) - 1), width="stretch")
b3.caption(
    f"Image {pos + 1} of {len(ids)} in the gallery's current filter." if pos is not None
    else "This image is outside the gallery's current filter; Previous/Next start at its first image."
)

d = loaders.load_detail(ctx.url, ctx.run_id, image_id, ctx.stamp)
if d is None or d.pred is None:
    st.error(f"Image {image_id} has no prediction in run #{ctx.run_id}.")
    st.stop()

with st.container(border=True):
    c1, c2, c3 = st.columns(3)
    alpha = c1.slider("Heatmap opacity", 0.0, 1.0, DEFAULT_ALPHA, 0.05, key="cmp_alpha")
    colormap = c2.selectbox("Colormap", list(COLORMAPS), index=list(COLORMAPS).index(DEFAULT_COLORMAP), key="cmp_cmap")
    norm = c3.radio("Scale", ["per image", "shared across both maps", "none (raw values)"], key="cmp_norm",
                    horizontal=True)

verdict = "correct" if d.pred == d.label else "wrong"
st.markdown(
    f"**{d.relpath}** ({d.split}) · true **{names[d.label]}** · predicted **{names[d.pred]}** "
    f"at {d.confidence:.1%} · {verdict}" + (f" · loss {d.loss:.3f}" if d.loss is not None else "")
)

size = ctx.info.image_size
method = METHOD_LABELS.get(d.maps.method, d.maps.method) if d.maps is not None else METHOD_LABELS[DEFAULT_METHOD]
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
    chart(top5_bars(names, d.top5_prob, label=d.label, idx=d.top5_idx), key="cmp_top5", name=f"top5-{d.relpath}")
if shown and norm.startswith("none"):
    lo, hi = min(float(c.min()) for c in shown), max(float(c.max()) for c in shown)
    show_colorbar(colormap, low="0", high="1", note=f"raw map values (they span {lo:.3g}–{hi:.3g}; above 1 saturates)")
elif shown and norm.startswith("shared"):
    show_colorbar(colormap, low="0", high=f"{normalize[1]:.3g}", note="raw map values, one scale for both maps")
else:
    show_colorbar(colormap, note="each map scaled to its own peak")

state.publish(run=ctx.run_id, image=image_id, split=ss.get("split"), sport=ss.get("sport", []),
              pred=ss.get("pred", []), conf=state.confidence_param())
