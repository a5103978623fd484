"""Event time as Int64 epoch milliseconds, from the column a stream declares.

Examples
--------
>>> import polars as pl
>>> from lockgate.operators.event_time import epoch_ms
>>> frame = pl.DataFrame({"ts": [0, 1_500]}).with_columns(pl.col("ts").cast(pl.Datetime("ms")))
>>> frame.select(epoch_ms("ts", frame.schema["ts"]))["ts"].to_list()
[0, 1500]
"""

from __future__ import annotations

import polars as pl

__all__ = ["epoch_ms"]


def epoch_ms(column: str, dtype: pl.DataType) -> pl.Expr:
    """``column`` as Int64 epoch ms: a Datetime (in UTC when it has a time zone), or an integer already in epoch ms."""
    if isinstance(dtype, pl.Datetime):
        expr = pl.col(column)
        if dtype.time_zone is not None:
            expr = expr.dt.convert_time_zone("UTC")
        return expr.dt.epoch("ms")
    return pl.col(column).cast(pl.Int64)
