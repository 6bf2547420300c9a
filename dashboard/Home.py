"""Entry point: ``streamlit run dashboard/Home.py -- --db URL`` (or set SPORTS_DB).

Lists the pages and draws the run picker that every page shares; the pages themselves live in ``views/``,
what they share beside them: ``loaders`` (cached reads of the store), ``state`` (choices carried across
pages and into the URL), ``context`` (the run a page shows), ``tiles`` (images with their maps).
"""
import streamlit as st

from dashboard import context, state

st.set_page_config(page_title="Sports Grad-CAM workbench", page_icon=":material/sports:", layout="wide")
state.init_state()

page = st.navigation(
    [
        st.Page("views/overview.py", title="Overview", icon=":material/home:", default=True),
        st.Page("views/confusion.py", title="Confusion matrix", icon=":material/grid_on:"),
        st.Page("views/per_class.py", title="Per-class accuracy", icon=":material/bar_chart:"),
        st.Page("views/gallery.py", title="Misclassifications", icon=":material/photo_library:"),
        st.Page("views/compare.py", title="Heatmap comparison", icon=":material/compare:"),
        st.Page("views/data_issues.py", title="Data issues", icon=":material/report:"),
        st.Page("views/export.py", title="Export", icon=":material/download:"),
        st.Page("views/trust.py", title="Can the maps be trusted?", icon=":material/verified:"),
        st.Page("views/calibration.py", title="Calibration", icon=":material/speed:"),
        st.Page("views/review_queue.py", title="Review queue", icon=":material/fact_check:"),
        st.Page("views/map.py", title="Map", icon=":material/scatter_plot:"),
        st.Page("views/try_image.py", title="Try an image", icon=":material/add_photo_alternate:"),
        st.Page("views/compare_runs.py", title="Compare runs", icon=":material/difference:"),
    ]
)
context.sidebar()  # the page itself explains a missing, empty or old store
page.run()
