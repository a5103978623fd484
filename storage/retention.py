"""When a table that appends every change lets go of its history: the one retention rule.

Window state (a delta per epoch) and update-mode sink tables (a row per update)
only ever append, so they hold history: rows that later rows supersede.  Both
let go of it by the same rule, :func:`history_due`; the engine applies it after
each epoch (``WindowRuntime.take`` for window state, ``SinkTable.prune_due`` for
tables) and ``Pipeline(snapshot_rows=...)`` sets its floor.

Examples
--------
>>> from lockgate.storage.retention import history_due
>>> history_due(history_rows=5_000, live_rows=1_000, snapshot_rows=100)
True
"""

from __future__ import annotations

__all__ = ["HISTORY_FACTOR", "history_due"]

#: how many stored rows per live row a table may hold before its history goes
HISTORY_FACTOR = 4


def history_due(history_rows: int, live_rows: int, snapshot_rows: int) -> bool:
    """Whether a table holding ``history_rows`` for ``live_rows`` live ones should let go of its history.

    The rule: more than ``max(snapshot_rows, 4 x live_rows)`` rows.  Then a window
    operator writes a snapshot of its open windows (``live_rows``; ``history_rows``
    are the rows it loaded and appended since), after which the rows before the
    snapshot are deleted; an update-mode sink table (``live_rows``: what its last
    prune left) has the rows later updates superseded deleted.  Either happens
    ``keep_history`` after the epoch commits, in the background.

    Why so: letting go of history costs in proportion to the rows involved (a
    snapshot writes every live row, a prune reads the table), and it comes only
    once a table holds four rows per live one, so that cost is spread over at
    least three appended rows per live row; in between, a load or a read scans at
    most four stored rows per live one.  ``snapshot_rows`` is a floor that keeps
    a small table from doing it every few epochs.

    Parameters
    ----------
    history_rows
        Rows the table holds (or, for window state, has loaded and appended since
        its last load or snapshot).
    live_rows
        Rows a reader would get: open windows, kept rows, or the rows a prune left.
    snapshot_rows
        The floor (``Pipeline(snapshot_rows=...)``, 1,000,000 by default).

    Examples
    --------
    >>> history_due(4_000, live_rows=1_000, snapshot_rows=100)     # 4 x live: not more
    False
    >>> history_due(4_001, live_rows=1_000, snapshot_rows=100)
    True
    >>> history_due(900, live_rows=10, snapshot_rows=1_000)        # under the floor
    False
    """
    return history_rows > max(snapshot_rows, HISTORY_FACTOR * live_rows)
