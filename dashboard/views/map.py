"""Map: every image of the run as a point of the 2-D map of the model's feature vectors, and the gallery of
a selection. Images the model finds alike sit together, so clusters of mistakes and mislabelled images
stand out; the map is drawn by ``jobs.embed`` and only read here."""
import streamlit as st

from core.figures_map import COLOR_BY, COLOR_BY_LABELS
from core.splits import SPLITS
from dashboard import calibration_ui, embedding, loaders, reviews_ui, state
from dashboard.charts import chart
from dashboard.context import require_run, shown_url

NO_SPORT = "(none)"

st.title("Map")
ctx = require_run()
reviews_ui.reviewer_sidebar()
names = list(ctx.names)
ss = st.session_state

stamp = embedding.load_embed_stamp(ctx.url, ctx.run_id)
hint = embedding.embed_hint(ctx)
if stamp is None:
    st.info(f"Run #{ctx.run_id} has no feature vectors yet, so there is no map to show. Compute them and draw "
            f"the map with {hint} (it reads the run's checkpoint), then reload this page.")
    st.stop()
points, info = embedding.load_map(ctx.url, ctx.run_id, stamp)
total = embedding.vector_total(stamp)
if info is None or points.empty:
    st.info(f"Run #{ctx.run_id} has {total:,} feature vectors but no map yet. Draw it with {hint}, then reload "
            "this page.")
    st.stop()
if info["n_points"] != total:
    st.warning(f"The map shows {info['n_points']:,} of the run's {total:,} feature vectors: it was drawn before the "
               f"others were stored. Redraw it with {hint}.")

with st.container(border=True):
    c1, c2, c3 = st.columns([1, 1.4, 1.4])
    color_by = c1.selectbox("Colour by", COLOR_BY, format_func=COLOR_BY_LABELS.get, key="map_color")
    present = [s for s in SPLITS if s in set(points["split"])]
    splits = c2.multiselect("Splits", present, default=present, key="map_splits", placeholder="every split")
    if ss.get("map_sport") not in [NO_SPORT] + names:  # first visit: the sport chosen on another page, if any
        shared = ss.get("sport") or []
        ss["map_sport"] = shared[0] if shared and shared[0] in names else NO_SPORT
    sport = c3.selectbox("Highlight a sport", [NO_SPORT] + names, key="map_sport")

audit_stamp = loaders.load_audit_stamp(ctx.url, ctx.run_id) if color_by == "audit" else None
if color_by == "audit" and audit_stamp is None:
    st.caption(f"Run #{ctx.run_id} has no data audit: every point reads 'no flag'. Audit it with "
               f"`python -m jobs.audit --run {ctx.run_id} --db {shown_url(ctx.url)}`.")
highlight = names.index(sport) if sport != NO_SPORT else None
flags = loaders.load_flags(ctx.url, ctx.run_id, audit_stamp) if color_by == "audit" else None
temperature = calibration_ui.temperature(ctx.url, ctx.run_id)
shown = embedding.shown_points(calibration_ui.shown(ctx, points), tuple(splits), flags)
view = (ctx.url, ctx.run_id, stamp, audit_stamp, tuple(splits), temperature)
fig = embedding.map_figure(view, shown, tuple(names), color_by, highlight)
event = chart(fig, key="map_chart", name=f"map-run{ctx.run_id}-{color_by}", on_select="rerun",
              selection_mode=("box", "lasso", "points"))
method = {"umap": "UMAP", "pca": "PCA"}.get(info["method"], info["method"])
st.caption(
    f"{len(shown):,} of {len(points):,} images; confidences {calibration_ui.word(ctx)}. The map ({method}, seed "
    f"{info['seed']}, drawn "
    f"{info['created_at'].replace('T', ' ')} UTC) places images the model finds alike close together; it shows "
    "neighbourhoods, not distances. Hovering a point shows its labels: Streamlit charts cannot show a "
    "picture on hover, so the thumbnails of the points you click or select with the box or the lasso appear "
    "below."
)

st.subheader("Selection")
chosen = embedding.show_selection(ctx, shown, embedding.selected_ids(event), key="map_sel")
if chosen is not None:
    ss["image"] = chosen
    st.switch_page("views/compare.py")

if sport != NO_SPORT:
    ss["sport"] = [sport]
state.publish(run=ctx.run_id, sport=ss.get("sport", []))
