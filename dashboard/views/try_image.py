"""Try an image: upload photos (or pick a file of the run's data) and see the run's own model predict and
explain them. The only page that runs the model; its parts live in ``dashboard.try_ui``."""
import streamlit as st

from dashboard import state, try_ui
from dashboard.context import require_run

st.title("Try an image")
ctx = require_run()
names = list(ctx.names)
loaded = try_ui.predictor_for(ctx.info)
if isinstance(loaded, str):
    st.error(loaded)
    st.stop()
temperature = try_ui.run_temperature(ctx)
limit = try_ui.upload_limit_mb()
size = loaded.predictor.image_size

st.caption(f"Run #{ctx.run_id}'s own model ({size}×{size} px input, the preprocessing of its evaluation). "
           f"JPEG, PNG or WebP, up to {limit} MB per file. Uploads are read in memory only: never written to "
           f"disk, and forgotten when this browser tab closes.")
up, pick = st.columns([3, 2])
files = up.file_uploader(f"Upload images (up to {limit} MB each)", type=try_ui.UPLOAD_TYPES,
                         accept_multiple_files=True, key="try_upload")
with pick:
    st.markdown("**Or pick an image of the run's data**")
    relpath = try_ui.data_picker(ctx)

items = try_ui.upload_items(files or [], size, limit * 1_000_000)
if relpath:
    items.append(try_ui.data_item(ctx.info.data_root, relpath))
methods, picked, view = try_ui.controls(names)

for it in items:
    if it.error:
        st.error(it.error)
if not items:
    st.info("Upload one or more images, or pick a sport and a file of the run's data.")
elif not methods:
    st.warning("Choose at least one method to draw the maps.")
else:
    good = [it for it in items if it.image is not None]
    if good:
        with st.spinner(f"Predicting and explaining {len(good)} image{'s' if len(good) != 1 else ''}…"):
            results = try_ui.predict(loaded, good, methods, picked)
        for k, it in enumerate(good):
            r = results[it.key]
            note = try_ui.stored_line(ctx, it.source) if it.source != "upload" else None
            with st.container(border=True):
                try_ui.show_result(r, names, methods, view, temperature=temperature, note=note)
                try_ui.nearest_images(ctx, r, key=str(k))
                if st.button("Add to download", key=f"try_add_{k}", icon=":material/add:"):
                    n = try_ui.collect(r, try_ui.record_of(r, names, it, temperature))
                    st.toast(f"Added {it.name} to the download ({n} collected).")

st.subheader("Download")
try_ui.collected_download(ctx, view)
state.publish(run=ctx.run_id)
