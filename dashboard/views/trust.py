"""Can the maps be trusted? Which CAM method to read, deletion / insertion scores against trivial maps, and the
sanity cascade."""
import numpy as np
import pandas as pd
import streamlit as st

from core.cammaps import BASELINE_CENTRE, TARGET_PRED, TARGET_TRUE, method_label
from core.figures import map_name, sanity_cascade, trust_curves, trust_distribution
from core.intervals import rate
from core.metrics import RANDOM_BASELINE, trust_per_class, trust_summary
from dashboard import loaders, state
from dashboard.context import job_command, require_run
from dashboard.methods_ui import method_param, method_picker, scored_for, show_ranking
from dashboard.tiles import TILE_PX, map_of_class, picture, show_colorbar, show_picture
from dashboard.charts import chart

GALLERY = 6
BASELINES = (RANDOM_BASELINE, BASELINE_CENTRE)  # the maps that know nothing of the model, scored beside it
SCORES = {"deletion_auc": "deletion AUC (lower is better)", "insertion_auc": "insertion AUC (higher is better)"}
SANITY_WORDS = {"stage": "re-initialised down to", "kind": "kind", "spearman_mean": "Spearman, mean",
                "spearman_std": "Spearman, sd", "ssim_mean": "SSIM, mean", "ssim_std": "SSIM, sd", "n": "images"}


def per_class_view(table: pd.DataFrame, metric: str, method: str) -> pd.DataFrame:
    """The per-class table for the chosen score, in words: class, images, the mean AUC of each map (named
    "Grad-CAM", "random map", "centred map") and the share where ``method`` beats the random map."""
    short = "del_" if metric == "deletion_auc" else "ins_"
    shown = (method, *BASELINES)
    order = [f"{short}{m}" for m in shown if f"{short}{m}" in table.columns]
    view = table[["class", "images", *order, "beats_random"]]
    return view.rename(columns={**{c: map_name(c[len(short):]) for c in order},
                                "beats_random": f"{method_label(method)} beats random"})


def curves_of(rows: pd.DataFrame) -> dict:
    return {r.method: (r.deletion_curve, r.insertion_curve) for r in rows.itertuples()}


st.title("Can the maps be trusted?")
ctx = require_run()
names = ctx.names
state.publish(run=ctx.run_id)  # the link names the run even when the page stops early (nothing scored yet)
version = loaders.load_trust_version(ctx.url, ctx.run_id)
if version is None:
    st.info(f"Run #{ctx.run_id} has no faithfulness scores yet. Run "
            f"`{job_command('trust', ctx.url, f'--run {ctx.run_id}')}` (add `--sample 200` for a quick look), "
            "then reload.")
    st.stop()
frame = loaders.load_trust(ctx.url, ctx.run_id, ctx.stamp, version)
check = loaders.load_sanity(ctx.url, ctx.run_id, version)
settings = check["settings"]
st.caption(
    f"{settings.get('images', '?')} {settings.get('split', '')} images, {settings.get('steps')} steps, deleted "
    f"pixels filled with the {'dataset mean' if settings.get('fill') == 'mean' else 'blurred image'}; "
    f"scored {check['created_at']:%Y-%m-%d %H:%M}. Deletion: the probability of the explained class as the "
    "most important pixels are removed (lower area = more faithful). Insertion: as they are revealed on a "
    "blurred image (higher = more faithful). A random and a centred map give the scale."
)

show_ranking(loaders.load_ranking(ctx.url, ctx.run_id, tuple(names), ctx.stamp, version), ctx.run_id, ctx.url)

st.subheader("One method in detail")
c0, c1, _ = st.columns([1, 1, 2])
method = method_picker(ctx, "tr_method", container=c0)
LABEL = method_label(method)
target = c1.radio("Map of", [TARGET_PRED, TARGET_TRUE], key="tr_target", horizontal=True,
                  format_func={TARGET_PRED: "predicted class", TARGET_TRUE: "true class (mistakes)"}.get)
if method not in set(frame["method"]):
    state.publish(run=ctx.run_id, method=method_param())
    st.info(f"{LABEL} has not been scored on this run. Run "
            f"`{job_command('trust', ctx.url, f'--run {ctx.run_id}', f'--methods {method}')}` (or `--methods all`), "
            "then reload.")
    st.stop()
frame = scored_for(frame, method, BASELINES)
rows = frame[frame["target"] == target]
if rows.empty:
    st.info("No maps of this kind were scored (the true-class map is scored only for misclassified images).")
    st.stop()
summary = trust_summary(frame, target, method)
cols = st.columns(4)
for col, m in zip(cols, (method, *BASELINES)):
    v = summary["methods"].get(m)
    if v:
        col.metric(f"{map_name(m)}: deletion AUC", f"{v['deletion_auc']:.3f}",
                   help=f"insertion AUC {v['insertion_auc']:.3f}; mean over {v['n']} maps")
beats = summary["gradcam_beats"].get(RANDOM_BASELINE)
paired = rows.pivot_table(index="image_id", columns="method", values="deletion_auc")
if beats and {method, RANDOM_BASELINE} <= set(paired.columns):
    paired = paired[[method, RANDOM_BASELINE]].dropna()
    won = rate(int((paired[method] < paired[RANDOM_BASELINE]).sum()), len(paired))
    cols[3].metric(f"{LABEL} beats random", f"{won.value:.0%}",
                   help=f"share of images with a lower deletion AUC; {beats['insertion']:.0%} with a higher "
                   "insertion AUC")
    cols[3].caption(f"{won.k} of {won.n} images; 95% interval {won.lo:.0%}–{won.hi:.0%}")

st.subheader("Per class")
table = trust_per_class(frame, names, target, method).sort_values("beats_random", kind="stable")
classes = list(table["class"])
default = classes[: min(8, len(classes))]
chosen = st.multiselect(f"Classes in the chart (default: the {len(default)} where {LABEL} beats random least "
                        "often)", classes, default=default, key="tr_classes")
metric = st.radio("Score", list(SCORES), key="tr_metric", horizontal=True, format_func=SCORES.get)
index = {n: i for i, n in enumerate(names)}
shown = rows[rows["label"].isin([index[c] for c in chosen if c in index])] if chosen else rows
chart(trust_distribution(shown, names, metric=metric), key="tr_dist", name=f"trust-{metric}")
view = per_class_view(table, metric, method)
st.caption(f"Mean {SCORES[metric]} of each map over the class's images, and how often {LABEL}'s deletion AUC "
           "is below the random map's on the same image.")
prog = {c: st.column_config.ProgressColumn(c, min_value=0.0, max_value=1.0, format="%.3f", width=150,
                                           help=f"mean {SCORES[metric]} of the class's images")
        for c in view.columns[2:-1]}
prog[view.columns[-1]] = st.column_config.ProgressColumn(
    view.columns[-1], min_value=0.0, max_value=1.0, format="%.2f", width=170,
    help=f"share of the class's images where {LABEL}'s deletion AUC is below the random map's")
prog["images"] = st.column_config.NumberColumn("images", width=64)
prog["class"] = st.column_config.TextColumn("class", width=170)
st.dataframe(view, hide_index=True, key="tr_table", column_config=prog, height=min(420, 38 + 35 * len(view)))

st.subheader("Least faithful maps")
wide = rows.pivot_table(index="image_id", columns="method", values="deletion_auc")
gap = (wide[method] - wide.get(RANDOM_BASELINE, 0.0)).sort_values(ascending=False)
worst = gap.index[:GALLERY].tolist()
st.caption(f"{LABEL}'s deletion AUC minus the random map's, largest first: where removing the pixels the "
           "map calls important hurts the prediction less than removing random ones.")
info = rows.drop_duplicates("image_id").set_index("image_id")
maps = loaders.load_maps(ctx.url, ctx.run_id, tuple(int(i) for i in worst), ctx.stamp, method)
show_colorbar(note="each map scaled to its own peak")
for start in range(0, len(worst), 3):
    for col, image_id in zip(st.columns(3), worst[start : start + 3]):
        r = info.loc[image_id]
        with col:
            show_picture(picture(ctx, r.relpath, TILE_PX, map_of_class(maps.get(int(image_id)), int(r.class_index))))
            st.caption(f"{r.relpath} · true {names[int(r.label)]} · map of {names[int(r.class_index)]} · "
                       f"gap {gap[image_id]:+.3f}")
            chart(trust_curves(np.linspace(0, 1, len(r.deletion_curve)),
                               curves_of(rows[rows["image_id"] == image_id]), height=240),
                  key=f"tr_worst_{image_id}", name=f"trust-curves-{image_id}")

st.subheader("Curves of one image")
ids = list(info.index)
labels = {i: f"{info.loc[i].relpath} ({names[int(info.loc[i].label)]})" for i in ids}
state.seed("tr_image", "image", ids[0], valid=lambda v: v in ids)
image_id = st.selectbox("Image", ids, format_func=labels.get, key="tr_image")
one = rows[rows["image_id"] == image_id]
chart(trust_curves(np.linspace(0, 1, len(one.iloc[0].deletion_curve)), curves_of(one)), key="tr_one",
      name=f"trust-curves-{image_id}")
st.dataframe(one[["method", "deletion_auc", "insertion_auc"]].assign(method=one["method"].map(map_name))
             .rename(columns={"method": "map", **SCORES}), hide_index=True, key="tr_one_table")

st.subheader("Sanity check: cascading model randomisation")
st.caption(
    f"{check['n_images']} images, layer {check['layer']}. The layers are re-initialised from the top down, "
    "cumulatively, and the maps recomputed. Maps that explain the model should become unlike the trained ones "
    "(similarity near 0); the trained model against itself and with slight input noise shows what 'alike' is. "
    "Data randomisation (retraining on shuffled labels) is not run."
)
chart(sanity_cascade(check["stages"]), key="tr_cascade", name="sanity-cascade")
st.dataframe(pd.DataFrame(check["stages"]).drop(columns=["modules"], errors="ignore").rename(columns=SANITY_WORDS),
             hide_index=True, key="tr_cascade_table")
state.publish(run=ctx.run_id, image=image_id, method=method_param())
