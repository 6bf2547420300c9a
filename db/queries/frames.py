"""DataFrame helpers shared by the query modules."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

# Ids per IN (...) list: well under SQLite's and PostgreSQL's limits on bound parameters.
ID_CHUNK = 500


def empty(columns: Sequence[str]) -> pd.DataFrame:
    """A frame with ``columns`` and no rows (object dtype), so that callers can select columns of it."""
    return pd.DataFrame({c: pd.Series(dtype="object") for c in columns})
