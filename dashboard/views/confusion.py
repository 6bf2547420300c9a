"""Confusion matrix: which sports the model takes for which, and the images behind each cell."""
import streamlit as st

from core.figures import confusion_heatmap
from core.intervals import add_wilson
from core.metrics import confused_pairs
from dashboard import calibration_ui, confusion_large, intervals_ui, scale_ui, state
from dashboard.context import require_run, split_choice
from dashboard.tiles import show_tiles
from dashboard.charts import chart

st.title("Confusion matrix")
ctx = require_run()
counted = scale_ui.require_counts(ctx)  # per split, from the store
names = ctx.names

c1, c2, c3, c4 = st.columns([1, 1.3, 1.5, 1.2])
splits = split_choice(ctx, counted, "cm_split", container=c1)
scale = c2.radio("Cells", ["counts", "row-normalized"], key="cm_scale", horizontal=True)
order = c3.radio("Order", ["alphabetical", "grouped by confusion"], key="cm_order", horizontal=True)
state.seed("cm_hide_diag", "_cm_hide_diag", len(names) > 20)
hide_diag = c4.toggle("Hide correct (diagonal)", key="cm_hide_diag")

cm = scale_ui.load_confusion(ctx.url, ctx.run_id, len(names), splits, ctx.stamp)  # GROUP BY label, pred
if len(names) > confusion_large.RASTER_ABOVE:  # a heatmap of a million cells neither draws nor reads
    event = confusion_large.raster_section(ctx, splits, normalize=scale == "row-normalized",
                                           grouped=order.startswith("grouped"), hide_diagonal=hide_diag)
else:
    fig = confusion_heatmap(
        cm,
        names,
        normalize=scale == "row-normalized",
        order="confusion" if order.startswith("grouped") else "alphabetical",
        hide_diagonal=hide_diag,
    )
    event = chart(fig, key="cm_chart", name="confusion-matrix", on_select="rerun", selection_mode="points")
st.caption("Rows are the true sport, columns the prediction. Click an off-diagonal cell to see its images.")

pairs = confused_pairs(cm, names, limit=50)
ss = st.session_state
if pairs.empty:
    st.success("No misclassified images in this selection.")
    state.publish(run=ctx.run_id, split=ss.get("split"))
    st.stop()

labels = [f"{r.true} → {r.predicted} ({r.count})" for r in pairs.itertuples()]
by_pair = {(int(r.true_idx), int(r.pred_idx)): lab for r, lab in zip(pairs.itertuples(), labels)}

# A click on a cell chooses its pair, but only when the click is new: later reruns keep the selectbox choice.
points = (event.selection.points if event and event.selection else []) or []
clicked = None
for p in points:
    cd = p.get("customdata")
    if isinstance(cd, dict):  # typed arrays can come back as {"0": .., "1": ..}
        cd = [cd[k] for k in sorted(cd, key=lambda k: int(k))]
    if cd is not None and len(cd) >= 2:
        clicked = (int(cd[0]), int(cd[1]))
if clicked != ss.get("_cm_last_click"):
    ss["_cm_last_click"] = clicked
    if clicked is not None:
        lab = by_pair.get(clicked)
        if lab is None:  # a pair outside the top 50: add it
            t, p = clicked
            lab = f"{names[t]} → {names[p]} ({int(cm[t, p])})"
            labels.append(lab)
            by_pair[clicked] = lab
        ss["cm_pair"] = lab

# A pair from the URL (sport + pred) or from earlier on this page.
url_pair = None
if len(ss.get("sport", [])) == 1 and len(ss.get("pred", [])) == 1 and ss["sport"][0] in names and ss["pred"][0] in names:
    url_pair = by_pair.get((names.index(ss["sport"][0]), names.index(ss["pred"][0])))
state.seed("cm_pair", "_cm_pair", url_pair or labels[0], valid=lambda v: v in labels)
if ss["cm_pair"] not in labels:
    ss["cm_pair"] = labels[0]

# Widths in px that fit the seven columns in the left part of a 1400 px window (names longer than their
# column are cut with an ellipsis; the pair selector beside the table shows them whole).
left, right = st.columns([1.4, 1])
with left:
    st.subheader("Most confused pairs")
    # The share is count of n (the true sport's images): its 95% Wilson interval says how firm it is.
    show = intervals_ui.with_spans(add_wilson(pairs.assign(n=cm.sum(axis=1)[pairs["true_idx"].to_numpy(int)]),
                                              "count", "n", "share"), ("share",))
    show = show[["true", "predicted", "count", "n", "share_of_true", "share 95%", "reverse_count"]]
    st.dataframe(
        show,
        hide_index=True,
        key="cm_pairs_table",
        height=min(420, 38 + 35 * len(show)),
        column_config={
            "true": st.column_config.TextColumn("true", width=115),
            "predicted": st.column_config.TextColumn("predicted", width=115),
            "count": st.column_config.NumberColumn("images", width=48),
            "n": st.column_config.NumberColumn("n", width=36, help="images of the true sport"),
            "share_of_true": st.column_config.NumberColumn("share", format="percent", width=58,
                                                           help="of the true sport's images"),
            "share 95%": st.column_config.TextColumn("95% (Wilson)", width=92,
                                                     help="95% Wilson interval of the share"),
            "reverse_count": st.column_config.NumberColumn("reverse", width=54,
                                                           help="images of the predicted sport taken for the true one"),
        },
    )
with right:
    choice = st.selectbox("Pair", labels, key="cm_pair")
    t, p = next(k for k, v in by_pair.items() if v == choice)
    ss["_cm_pair"] = choice
    n_pair = int(cm[t, p])
    # The pair's 12 most confident images, read as such from the store (the calibrated switch re-ranks them).
    rows = calibration_ui.shown(ctx, scale_ui.load_pair_images(ctx.url, ctx.run_id, t, p, splits, 12, ctx.stamp),
                                resort=True)
    st.markdown(f"**{n_pair}** image{'s' if n_pair != 1 else ''} of *{names[t]}* predicted as *{names[p]}*"
                + (f" (showing {min(n_pair, 12)})" if n_pair > 12 else ""))
    chosen = show_tiles(ctx, rows.head(12), per_row=3, key="cm_tile")
    if st.button("Open these in the gallery", key="cm_to_gallery"):
        ss["sport"], ss["pred"], ss["conf"], ss["page"] = [names[t]], [names[p]], (0.0, 1.0), 1
        st.switch_page("views/gallery.py")
    if chosen is not None:
        ss["image"] = chosen
        st.switch_page("views/compare.py")

state.publish(run=ctx.run_id, split=ss.get("split"), sport=[names[t]], pred=[names[p]])
