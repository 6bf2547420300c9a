"""Read-only queries the jobs, the dashboard and the report exporter share.

Every function takes a ``session`` and returns a DataFrame, a small value type or plain Python objects;
none of them writes or commits. Class indices stay integers; callers map them to names with
``class_names``. Computations on what comes back (metrics, confusions, summaries) live in ``core.metrics``.

By concern: ``runs`` (runs, epochs, evaluations, summaries), ``images`` (images, predictions, logits, one
image), ``maps`` (stored CAM maps), ``audit`` (the data audit), ``trust`` (faithfulness scores),
``methods`` (the CAM methods side by side: pointing game, ranking), ``report`` (a run's figure-set tables),
``reviews`` (verdicts on images) and ``compare`` (two runs or a run's snapshot, side by side). Every name is
also importable from ``db.queries`` itself.
"""
from db.queries.audit import LEAKAGE_COLUMNS, audit_for, audit_report, audit_stamp, flagged_images
from db.queries.compare import (
    COMPARE_COLUMNS,
    compare_frame,
    compare_stored,
    comparison_data,
    find_compared,
    refuse_unfinished,
    run_input,
    snapshot_id,
    snapshots_of,
)
from db.queries.images import (
    IMAGE_COLUMNS,
    PREDICTION_COLUMNS,
    SCORED_COLUMNS,
    ImageDetail,
    StoredLogits,
    confusion_matrix,
    errors_frame,
    image_detail,
    image_samples,
    image_splits,
    images_frame,
    images_without_sha256,
    logits_for,
    prediction_splits,
    predictions_frame,
    scored_images,
    usable_images,
)
from db.queries.maps import maps_for, maps_query_plan, ordered_methods, stored_methods
from db.queries.methods import POINTING_COLUMNS, method_ranking, pointing_frame
from db.queries.report import run_data
from db.queries.runs import (
    RunInfo,
    class_names,
    default_run_id,
    epochs_frame,
    evaluation_rows,
    evaluations_frame,
    find_run,
    list_runs,
    run_info,
    run_summaries,
)
from db.queries.reviews import (
    REVIEW_COLUMNS,
    find_image,
    latest_reviews,
    latest_verdicts,
    review_counts,
    review_history,
    reviews_stamp,
    store_classes,
)
from db.queries.trust import TRUST_COLUMNS, TrustTables, sanity_check, trust_for, trust_frame, trust_version

__all__ = [
    "COMPARE_COLUMNS", "compare_frame", "compare_stored", "comparison_data", "find_compared", "refuse_unfinished",
    "run_input", "snapshot_id", "snapshots_of",
    "IMAGE_COLUMNS", "LEAKAGE_COLUMNS", "POINTING_COLUMNS", "PREDICTION_COLUMNS", "SCORED_COLUMNS", "TRUST_COLUMNS",
    "ImageDetail", "RunInfo", "StoredLogits", "TrustTables",
    "audit_for", "audit_report", "audit_stamp", "class_names", "confusion_matrix",
    "default_run_id", "epochs_frame", "errors_frame", "evaluation_rows", "evaluations_frame", "find_run",
    "flagged_images", "image_detail", "image_samples", "image_splits", "images_frame", "images_without_sha256",
    "list_runs", "logits_for", "maps_for", "maps_query_plan", "method_ranking", "ordered_methods",
    "pointing_frame", "prediction_splits", "predictions_frame",
    "run_data", "run_info", "run_summaries", "sanity_check", "scored_images", "stored_methods", "trust_for",
    "trust_frame", "trust_version", "usable_images",
    "REVIEW_COLUMNS", "find_image", "latest_reviews", "latest_verdicts", "review_counts", "review_history",
    "reviews_stamp", "store_classes",
]
