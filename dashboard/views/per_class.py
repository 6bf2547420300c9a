"""Per-class accuracy: precision, recall, F1 and support per sport, worst first."""
import streamlit as st

from core.figures import per_class_bars
from dashboard import loaders, state
from dashboard.context import require_predictions, require_run, split_choice
from dashboard.charts import chart as show_chart

st.title("Per-class accuracy")
ctx = require_run()
preds = require_predictions(ctx)
names = ctx.names
ss = st.session_state

c1, c2, c3 = st.columns([1, 1, 1])
splits = split_choice(ctx, preds, "pc_split", container=c1)
sort_by = c2.selectbox("Sort by", ["f1", "recall", "precision", "support", "class"], key="pc_sort")
descending = c3.toggle("Best first", key="pc_desc")

table = loaders.load_per_class(ctx.url, ctx.run_id, names, splits, ctx.stamp)
table = table.sort_values(sort_by, ascending=not descending, kind="stable")
table = table.assign(errors=table["support"] - (table["recall"] * table["support"]).round().astype(int))
flags = loaders.load_current_flags(ctx.url, ctx.run_id)
if not flags.empty:  # images the data audit involves, in the splits the table counts
    flags = flags[flags["split"].isin(splits or set(preds["split"]))]
    table = table.assign(flagged=table["class_idx"].map(flags["label"].value_counts()).fillna(0).astype(int))

st.dataframe(
    table[["class", "precision", "recall", "f1", "support", "errors", "predicted"]
          + (["flagged"] if "flagged" in table else [])],
    hide_index=True,
    key="pc_table",
    height=min(460, 38 + 35 * len(table)),
    column_config={
        "precision": st.column_config.ProgressColumn("precision", min_value=0.0, max_value=1.0, format="%.3f"),
        "recall": st.column_config.ProgressColumn("recall", min_value=0.0, max_value=1.0, format="%.3f"),
        "f1": st.column_config.ProgressColumn("F1", min_value=0.0, max_value=1.0, format="%.3f"),
        "predicted": st.column_config.NumberColumn("predicted", help="images predicted as this sport"),
        "flagged": st.column_config.NumberColumn(
            "flagged images", help="images of this sport the data audit flags: duplicate, leaked, "
            "conflicting or suspect label"),
    },
)

left, right = st.columns([2, 1])
with right:
    st.subheader("Look at a sport")
    order = list(table["class"])
    state.seed("pc_sport", "_pc_sport", ss.get("sport", [order[0]])[0] if ss.get("sport") else order[0],
                valid=lambda v: v in order)
    sport = st.selectbox("Sport", order, key="pc_sport")
    ss["_pc_sport"] = sport
    row = table.loc[table["class"] == sport].iloc[0]
    st.markdown(
        f"**{sport}**: precision {row.precision:.3f}, recall {row.recall:.3f}, F1 {row.f1:.3f}, "
        f"{int(row.support)} images, {int(row.errors)} of them misclassified."
    )
    if st.button("Show its misclassified images", key="pc_to_gallery", type="primary"):
        ss["sport"], ss["pred"], ss["conf"], ss["page"] = [sport], [], (0.0, 1.0), 1
        st.switch_page("views/gallery.py")
    if "flagged" in table and row.flagged and st.button(f"Show its {int(row.flagged)} flagged images", key="pc_to_issues"):
        ss["sport"] = [sport]
        st.switch_page("views/data_issues.py")
with left:
    chart = table
    if len(table) > 40:
        every = st.toggle(f"Chart all {len(table)} classes", key="pc_all")
        if not every:
            chart = table.head(40)
            st.caption(f"The first 40 classes in the table's order; switch on to chart all {len(table)}.")
    show_chart(per_class_bars(chart, sort_by=sort_by, ascending=not descending), key="pc_bars", name="per-class")

state.publish(run=ctx.run_id, split=ss.get("split"), sport=sport)
