"""A small progress bar on stderr (no dependency): shown only on a terminal, or when
forced, so logs and CI output stay clean."""

from __future__ import annotations

import os
import sys
import time

__all__ = ["progress"]


def progress(items, total=None, desc="", enabled=None, stream=None, count=None):
    """Iterate over ``items`` while drawing ``desc [#####     ] k/n  eta``.

    Parameters
    ----------
    items : iterable
    total : int, optional
        Defaults to ``len(items)``.
    enabled : bool, optional
        Default: when ``stream`` is a terminal and ``REFBBP_NO_PROGRESS`` is unset.
    count : callable, optional
        ``count(item)``: how much of ``total`` an item is (default 1; e.g. the inputs of
        a chunk, so that the bar counts inputs done).
    """
    stream = sys.stderr if stream is None else stream
    if total is None:
        try:
            total = len(items)
        except TypeError:
            total = None
    if enabled is None:
        enabled = stream.isatty() and not os.environ.get("REFBBP_NO_PROGRESS")
    if not enabled:
        yield from items
        return
    start = time.perf_counter()
    width = 30
    last = 0.0
    k = 0
    for item in items:
        k += 1 if count is None else count(item)
        yield item
        now = time.perf_counter()
        if now - last < 0.1 and k != total:
            continue
        last = now
        if total:
            done = int(width * k / total)
            eta = (now - start) / max(k, 1) * (total - k)
            stream.write(f"\r{desc} [{'#' * done}{' ' * (width - done)}] {k}/{total} "
                         f"eta {eta:5.1f}s")
        else:
            stream.write(f"\r{desc} {k} done, {now - start:.1f}s")
        stream.flush()
    if k:
        stream.write("\n")
        stream.flush()
