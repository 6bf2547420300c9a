"""Export: the run's figure set for a report (plots, image sheets, CSV tables, manifest) as one zip."""
import streamlit as st

from core.report import FORMATS, ExportOptions
from dashboard import scale_ui, state
from dashboard.context import job_command, require_run, split_choice
from dashboard.figureset import figure_set_zip

st.title("Export")
ctx = require_run()
counts = scale_ui.require_counts(ctx)  # the splits with predictions, counted in the store (not read whole)
names = list(ctx.names)
ss = st.session_state

st.caption(f"The same files as `{job_command('export', ctx.url, f'--run {ctx.run_id}')}`: confusion matrices, per-class scores, training curves, the most confident mistakes "
           "with both Grad-CAM maps, one error sheet per sport, the tables behind them, "
           "leakage and duplicate groups for an audited run, and the faithfulness table and plot and the sanity "
           "check for a run scored by `jobs.trust`. Plots are drawn at 300 dpi by a headless Chromium.")
c1, c2 = st.columns([1, 2])
splits = split_choice(ctx, counts, "exp_split", container=c1)
formats = c2.multiselect("Formats of plots and sheets", list(FORMATS), default=["png"], key="exp_formats")
sports = st.multiselect("Sports that get an error sheet", names, key="exp_sports",
                        placeholder="default: the 10 sports with the most errors")

signature = (ctx.run_id, ctx.stamp, splits, tuple(formats), tuple(sports))
if st.button("Build figure set", key="exp_build", type="primary", disabled=not formats):
    options = ExportOptions(formats=tuple(formats), sports=tuple(sports) or None, splits=splits)
    with st.spinner("Drawing the figure set…"):
        data, manifest = figure_set_zip(ctx.url, ctx.run_id, options)
    ss["_exp_zip"] = (signature, data, manifest)

built = ss.get("_exp_zip")
if built and built[0] == signature:
    _, data, manifest = built
    st.download_button(f"Download the figure set ({len(data) / 1e6:.1f} MB)", data=data,
                       file_name=f"run-{ctx.run_id}-figures.zip", mime="application/zip", key="exp_download",
                       on_click="ignore", icon=":material/download:")
    st.markdown(f"**{len(manifest['files'])}** files, built in {manifest['seconds']:.1f} s.")
    for item in manifest["skipped"]:
        st.warning(f"Skipped {item['item']}: {item['reason']}")
elif not formats:
    st.info("Choose at least one format.")
state.publish(run=ctx.run_id, split=ss.get("split"))
