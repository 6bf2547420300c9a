"""The Export page's figure set: the run's tables assembled by ``db.queries.run_data`` (as for
``python -m jobs.export``), written by ``core.report`` into a temporary folder and returned as zip bytes."""
from __future__ import annotations

import tempfile

from core.report import ExportOptions, write_figure_set, zip_folder
from dashboard import loaders
from db import queries


def figure_set_zip(url: str, run_id: int, options: ExportOptions) -> tuple[bytes, dict]:
    """The run's figure set (the same files as ``python -m jobs.export``) as zip bytes, and its manifest."""
    with loaders.session(url) as s, tempfile.TemporaryDirectory(prefix="figure-set-") as tmp:
        data = queries.run_data(s, run_id, options.splits)  # maps are read while the sheets are drawn
        manifest = write_figure_set(data, tmp, options)
        return zip_folder(tmp), manifest.to_dict()
