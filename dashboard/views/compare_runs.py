"""Compare runs: two runs, or a run before and after fine-tuning, on the images they share. Which images
flipped, whether the difference is more than noise, which sports changed, and where the maps moved."""
import numpy as np
import streamlit as st

from core.cammaps import DEFAULT_METHOD, method_label
from core.figures_compare import confusion_change_heatmap, per_class_change
from core.stages import stage_label
from dashboard import compare_runs_ui as ui
from dashboard import loaders, state
from dashboard.charts import chart
from dashboard.context import Ctx, job_command, open_store, shown_url, train_hint

GALLERY_SIZES = (6, 12, 24)
CHART_CLASSES = 30

st.title("Compare runs")
ss = st.session_state
url = open_store()
runs = ui.ordered_runs(loaders.load_runs(url))
if runs.empty:
    st.info(f"The store at `{shown_url(url)}` holds no runs yet.\n\n{train_hint(url)}")
    st.stop()
rows = {int(r.id): r for r in runs.itertuples()}
ids = list(rows)
if len(ids) < 2:
    st.info(f"Comparing needs two runs, or a run and its phase-1 snapshot: `{job_command('train', url)}` keeps the "
            "model at the end of phase 1 unless told `--no-phase1-snapshot`.")
    st.stop()
default_a, default_b = ui.default_pair(runs, loaders.load_default_run(url))
default_a = default_a if default_a is not None else ids[1]
default_b = default_b if default_b is not None else ids[0]

c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
state.seed("cr_a", "a", default_a, valid=lambda v: v in rows)
a_id = c1.selectbox("A: before", ids, format_func=lambda i: ui.run_label(rows[i]), key="cr_a")
state.seed("cr_b", "b", default_b, valid=lambda v: v in rows)
b_id = c2.selectbox("B: after", ids, format_func=lambda i: ui.run_label(rows[i]), key="cr_b")
ss["a"], ss["b"] = a_id, b_id
ra, rb = rows[a_id], rows[b_id]
for why in (ui.refusal(ra), ui.refusal(rb)):
    if why:
        state.publish(a=a_id, b=b_id)
        st.warning(why)
        st.stop()

stamp_a, stamp_b = ui.stamp(ra), ui.stamp(rb)
splits = ui.common_splits(url, a_id, stamp_a, b_id, stamp_b)
if not splits:
    state.publish(a=a_id, b=b_id)
    st.info("The two runs have no evaluated split in common.")
    st.stop()
options = splits + ["all"]
state.seed("cr_split", "split", "test" if "test" in splits else splits[0], valid=lambda v: v in options)
split = c3.selectbox("Split", options, key="cr_split")
ss["split"] = split
held_b = set(loaders.load_methods(url, b_id, stamp_b))
methods = [m for m in loaders.load_methods(url, a_id, stamp_a) if m in held_b] or [DEFAULT_METHOD]
first = DEFAULT_METHOD if DEFAULT_METHOD in methods else methods[0]
state.seed("cr_method", "method", first, valid=lambda v: v in methods)
if ss["cr_method"] not in methods:  # other runs under a kept widget
    ss["cr_method"] = first
method = c4.selectbox("CAM method", methods, key="cr_method", format_func=method_label,
                      help="The maps whose drift is measured and drawn: the methods both runs hold")
ss["method"] = method
try:
    result = ui.load_comparison(url, a_id, b_id, None if split == "all" else split, stamp_a, stamp_b, method)
except ValueError as exc:
    state.publish(a=a_id, b=b_id, split=split, method=method)
    st.info(f"Nothing to compare: {exc}.")
    st.stop()

classes = list(result.classes)
state.seed("cr_sport", "sport", [], valid=lambda v: all(x in classes for x in v))
sports = st.multiselect("Sports", classes, key="cr_sport", placeholder="every sport",
                        help="Narrows the per-class change, the galleries and the confusion change to these sports")
ss["sport"] = sports
state.publish(a=a_id, b=b_id, split=split, sport=sports, method=method)

ctx_a = Ctx(url, a_id, stamp_a, loaders.load_run(url, a_id, stamp_a))
ctx_b = Ctx(url, b_id, stamp_b, loaders.load_run(url, b_id, stamp_b))

# --------------------------------------------------------------------------- summary
j = result.to_json()
st.markdown(result.sentence)
p = result.mcnemar_p
if result.count("right to wrong") + result.count("wrong to right") == 0:
    st.info("No image flipped: the two runs are right on exactly the same images.")
elif p < 0.05:
    better = "B" if j["wrong_to_right"] > j["right_to_wrong"] else "A"
    st.success(f"The difference is significant at the 5 % level (p = {p:.2g}): {better} is the more accurate "
               "model on these images.")
else:
    st.info(f"The difference is not significant at the 5 % level (p = {p:.2g}): it may well be noise.")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Images compared", f"{result.matched:,}", border=True,
          help=f"only in A: {len(result.only_a)}, only in B: {len(result.only_b)}; matched by file content")
for col, side, t in ((m2, "A", j["top1_a"]), (m3, "B", j["top1_b"])):
    col.metric(f"Top-1 {side}", f"{t['acc']:.1%}", border=True,
               delta=None if side == "A" else f"{100 * (t['acc'] - j['top1_a']['acc']):+.1f} points",
               help=f"{t['correct']} of {t['n']}; 95% interval {t['ci_low']:.1%} to {t['ci_high']:.1%}")
    col.caption(f"{t['correct']:,} of {t['n']:,} · 95% interval {t['ci_low']:.1%}–{t['ci_high']:.1%}")
m4.metric("Right → wrong / wrong → right", f"{j['right_to_wrong']} / {j['wrong_to_right']}", border=True,
          help=f"wrong in both: {j['wrong_both']['total']} ({j['wrong_both']['same']} with the same prediction)")
notes = [f"{ui.run_label(ra)} vs {ui.run_label(rb)}, {split} split"]
if len(result.only_a) or len(result.only_b):
    notes.append(f"{len(result.only_a)} images only in A and {len(result.only_b)} only in B are left out")
if result.classes_only_a or result.classes_only_b:
    notes.append(f"compared on the {len(classes)} classes both have (only A: {len(result.classes_only_a)}, "
                 f"only B: {len(result.classes_only_b)})")
if len(result.relabelled):
    notes.append(f"{len(result.relabelled)} images labelled differently in the two runs are left out")
st.caption(" · ".join(notes))

drift = [{"maps of": what, "median Spearman": j["drift"][t]["spearman"], "median top-20% IoU": j["drift"][t]["iou"],
          "images": j["drift"][t]["n"]}
         for t, what in (("true", "the true class"), ("pred", "the same predicted class"))]
with st.expander("Explanation drift: did the model start looking elsewhere?", expanded=True):
    st.dataframe(drift, hide_index=True, key="cr_drift",
                 column_config={"median Spearman": st.column_config.NumberColumn(format="%.2f"),
                                "median top-20% IoU": st.column_config.NumberColumn(format="%.2f")})
    st.caption(f"1 means A and B look at the same cells. {len(result.looking_elsewhere)} images are right in both "
               f"but looking elsewhere, {len(result.flipped_and_moved)} flipped and the attention moved (Spearman "
               f"< {result.settings['max_spearman']} and IoU < {result.settings['max_iou']}).")

# --------------------------------------------------------------------------- per class
st.subheader("Per-class change")
pc = result.per_class if not sports else result.per_class[result.per_class["class"].isin(sports)]
limit = None
if len(pc) > CHART_CLASSES and not st.toggle(f"Chart all {len(pc)} sports", key="cr_all"):
    limit = CHART_CLASSES
    st.caption(f"The {CHART_CLASSES} worst changes; switch on to chart every sport.")
chart(per_class_change(pc, a="A", b="B", limit=limit), key="cr_per_class", name="per-class-change",
      title="Accuracy change per sport, B - A")
st.dataframe(ui.per_class_table(pc), hide_index=True, key="cr_table", height=min(420, 38 + 35 * len(pc)),
             column_config={"A": st.column_config.NumberColumn(format="percent"),
                            "B": st.column_config.NumberColumn(format="percent"),
                            "change (points)": st.column_config.NumberColumn(format="%+.1f")})
st.caption("Worst change first. Intervals: Wilson for each accuracy, a paired bootstrap (2,000 resamples of the "
           "images within the sport) for the change; a sport with few images has a wide one.")

# --------------------------------------------------------------------------- galleries
st.subheader("Images")
g1, g2 = st.columns([3, 1])
mode = g1.radio("Maps of", list(ui.TARGET_MODES), format_func=ui.TARGET_MODES.get, key="cr_mode", horizontal=True)
size = g2.selectbox("Images per gallery", GALLERY_SIZES, key="cr_size")
pairs = result.pairs if not sports else result.pairs[result.pairs["label"].isin(sports)]
galleries = [
    ("Right → wrong", pairs[pairs["change"] == "right to wrong"].sort_values("conf_b", ascending=False)),
    ("Wrong → right", pairs[pairs["change"] == "wrong to right"].sort_values("conf_a", ascending=False)),
    ("Looking elsewhere", pairs[pairs["looking_elsewhere"]].sort_values(["iou_true", "spearman_true"])),
    ("Flipped, attention moved", pairs[pairs["flipped_and_moved"]].sort_values(["iou_true", "spearman_true"])),
]
for tab, (title, rows_) in zip(st.tabs([f"{t} ({len(r):,})" for t, r in galleries]), galleries):
    with tab:
        if rows_.empty:
            st.info(f"No image: {title.lower()}" + (" among the chosen sports." if sports else "."))
            continue
        st.caption(f"{min(size, len(rows_))} of {len(rows_):,}; A's map on the left, B's on the right, both on one "
                   f"colour scale (the larger peak of the two).")
        ui.show_pairs(ctx_a, ctx_b, rows_.head(size), mode=mode, method=method)

# --------------------------------------------------------------------------- confusion change
st.subheader("Confusion change")
delta = result.confusion_delta.copy()
if sports:
    delta[~np.isin(classes, sports), :] = 0  # rows of the chosen sports, and where their images went
if not delta.any():
    st.info("The confusion matrices are the same" + (" for these sports." if sports else "."))
else:
    chart(confusion_change_heatmap(delta, classes, a="A", b="B"), key="cr_confusion", name="confusion-change",
          title="Confusion change, B - A")
    cells = result.changed_cells(limit=None)
    if sports:
        cells = cells[cells["true"].isin(sports)]
    st.dataframe(cells.head(20), hide_index=True, key="cr_cells")
    st.caption(f"Rows are true sports, columns predicted ones; red: more images in B than in A. "
               f"{stage_label(ctx_a.info.stage).capitalize()} A against {stage_label(ctx_b.info.stage)} B.")
