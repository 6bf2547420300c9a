"""Per-class accuracy: precision, recall, F1 and support per sport with their 95 % intervals, worst first."""
import streamlit as st

from core.figures import per_class_bars
from core.intervals import FEW_IMAGES, SORT_KEYS, ordering_note, worst_first
from dashboard import intervals_ui, loaders, scale_ui, state
from dashboard.context import require_run, split_choice
from dashboard.charts import chart as show_chart

st.title("Per-class accuracy")
ctx = require_run()
preds = scale_ui.require_counts(ctx)  # predictions per split, counted in the store
names = ctx.names
ss = st.session_state

c1, c2, c3, c4 = st.columns([1, 1, 1, 1.4])
splits = split_choice(ctx, preds, "pc_split", container=c1)
sort_by = c2.selectbox("Sort by", ["f1", "recall", "precision", "support", "class"], key="pc_sort")
descending = c3.toggle("Best first", key="pc_desc")
upper = c4.toggle("Worst first by the interval's upper bound", key="pc_upper",
                  disabled=sort_by not in SORT_KEYS or descending,
                  help="Rank a class by the best its score plausibly is (the upper end of its 95% interval), so a "
                       "class with 0 of 1 right does not rank below one with 40 of 100.")
upper = upper and sort_by in SORT_KEYS and not descending

table, macro = intervals_ui.load_class_intervals(ctx.url, ctx.run_id, names, splits, ctx.stamp)
if upper:
    table = worst_first(table.assign(n=table["support"]), by=sort_by, upper=True)
else:
    table = table.sort_values(sort_by, ascending=not descending, kind="stable")
table = table.assign(errors=table["support"] - (table["recall"] * table["support"]).round().astype(int))
table = intervals_ui.with_spans(table)
flags = loaders.load_current_flags(ctx.url, ctx.run_id)
if not flags.empty:  # images the data audit involves, in the splits the table counts
    flags = flags[flags["split"].isin(splits or set(preds["split"]))]
    table = table.assign(flagged=table["class_idx"].map(flags["label"].value_counts()).fillna(0).astype(int))

n_few = int(table["few"].sum())
worst = sort_by in SORT_KEYS and not descending
st.caption(
    (ordering_note(sort_by, upper=upper) + " " if worst else "")
    + f"Macro F1 {macro['value']:.3f} ({intervals_ui.macro_caption(macro)})."
    + (f" {n_few} of {len(table)} classes have fewer than {FEW_IMAGES} images." if n_few else "")
)
ratio = st.column_config.ProgressColumn
st.dataframe(
    table[["class", "precision", "precision 95%", "recall", "recall 95%", "f1", "f1 95%", "support", "few", "errors",
           "predicted"] + (["flagged"] if "flagged" in table else [])],
    hide_index=True,
    key="pc_table",
    height=min(460, 38 + 35 * len(table)),
    column_config={
        "precision": ratio("precision", min_value=0.0, max_value=1.0, format="%.3f"),
        "precision 95%": st.column_config.TextColumn("95% (Wilson)", help="95% Wilson interval of precision"),
        "recall": ratio("recall", min_value=0.0, max_value=1.0, format="%.3f"),
        "recall 95%": st.column_config.TextColumn("95% (Wilson)", help="95% Wilson interval of recall"),
        "f1": ratio("F1", min_value=0.0, max_value=1.0, format="%.3f"),
        "f1 95%": st.column_config.TextColumn("95% (bootstrap)", help="95% bootstrap interval of F1"),
        "support": st.column_config.NumberColumn("n", help="images of this sport in the split(s)"),
        "few": st.column_config.CheckboxColumn(f"< {FEW_IMAGES} images",
                                               help="too few images for the scores to say much"),
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
        f"**{sport}**: precision {row.precision:.3f} ({int(row.support - row.errors)} of {int(row.predicted)} "
        f"predictions; 95% {intervals_ui.span(row.precision_lo, row.precision_hi)}), recall {row.recall:.3f} "
        f"({int(row.support - row.errors)} of {int(row.support)}; 95% {intervals_ui.span(row.recall_lo, row.recall_hi)}), "
        f"F1 {row.f1:.3f} (95% {intervals_ui.span(row.f1_lo, row.f1_hi)}); {int(row.errors)} of its "
        f"{int(row.support)} images misclassified." + (f" Fewer than {FEW_IMAGES} images: read these as rough." if row.few else "")
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
    # A class with few images says so in its label; the bars are in the table's order.
    chart = chart.assign(**{"class": [f"{c} (n={n})" if few else c
                                      for c, n, few in zip(chart["class"], chart["support"], chart["few"])]})
    chart = chart.assign(_order=range(len(chart)))
    show_chart(per_class_bars(chart, sort_by="_order"), key="pc_bars", name="per-class")
    st.caption("Bars: F1 with its 95% bootstrap interval; markers: precision and recall.")

state.publish(run=ctx.run_id, split=ss.get("split"), sport=sport)
