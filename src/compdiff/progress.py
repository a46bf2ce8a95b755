"""Progress bars that do not flood logs: a live bar on a terminal, one line every 30 s elsewhere."""
from __future__ import annotations

import sys
from typing import Any

LOG_INTERVAL_S = 30.0


def progress_bar(total: int, desc: str, unit: str, disable: bool = False, **kwargs: Any):
    """A tqdm bar. When stderr is not a terminal (CI, a log file) tqdm would print a line per refresh,
    so the bar refreshes at most every LOG_INTERVAL_S seconds there, in ASCII."""
    from tqdm.auto import tqdm

    if not sys.stderr.isatty():
        kwargs = {"mininterval": LOG_INTERVAL_S, "maxinterval": LOG_INTERVAL_S, "ascii": True, **kwargs}
    return tqdm(total=total, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, **kwargs)
