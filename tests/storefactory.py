"""The generated stores of ``db.builder``, under the name the dashboard's tests import them by."""
from db.builder import (  # noqa: F401
    SANITY_STAGES,
    SPORTS,
    TRUST_METHODS,
    add_audit,
    add_trust,
    build_empty_store,
    build_store,
    class_list,
    plant_audit,
)
