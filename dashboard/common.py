"""The names pages imported from here before the split, re-exported for pages not yet moved to the modules
that define them: ``loaders`` (store location, cached reads), ``state`` (URL and shared choices),
``context`` (the run a page shows) and ``tiles`` (images with their maps). New code imports from those."""
from dashboard.context import (
    TRAIN_HINT,
    Ctx,
    gallery_errors,
    open_store,
    require_predictions,
    require_run,
    run_picker,
    split_choice,
)
from dashboard.loaders import (
    connect,
    db_url_from_argv,
    load_audit,
    load_audit_stamp,
    load_confusion,
    load_default_run,
    load_detail,
    load_epochs,
    load_errors,
    load_evaluations,
    load_flags,
    load_maps,
    load_per_class,
    load_predictions,
    load_run,
    load_runs,
    session,
    store_url,
)
from dashboard.state import SHARED, filter_errors, init_state, publish, seed
from dashboard.tiles import TILE_PX, TILES_PER_ROW, map_of_class, render_view, show_tiles, tile_images

__all__ = [
    "TRAIN_HINT", "Ctx", "gallery_errors", "open_store", "require_predictions", "require_run", "run_picker",
    "split_choice", "connect", "db_url_from_argv", "load_audit", "load_audit_stamp", "load_confusion",
    "load_default_run", "load_detail", "load_epochs", "load_errors", "load_evaluations", "load_flags",
    "load_maps", "load_per_class", "load_predictions", "load_run", "load_runs", "session", "store_url", "SHARED",
    "filter_errors", "init_state", "publish", "seed", "TILE_PX", "TILES_PER_ROW", "map_of_class", "render_view",
    "show_tiles", "tile_images",
]
