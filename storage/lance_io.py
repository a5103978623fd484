"""Lance primitives every storage module shares: where a table lives, open it, append to it.

Every lockgate table (window state, sink tables, the commit log) is one Lance
dataset under the state URI.  This module is the only one that opens or writes
a dataset by URI; what the rows mean is the business of the modules above it.

Examples
--------
>>> import tempfile, pyarrow as pa
>>> from lockgate.storage.lance_io import append_table, open_dataset, sql_list, table_uri
>>> uri = table_uri(tempfile.mkdtemp(), "t")
>>> open_dataset(uri) is None                       # not written yet
True
>>> append_table(uri, pa.table({"x": [1, 2]})), append_table(uri, pa.table({"x": [3]}))
(1, 2)
>>> open_dataset(uri).count_rows(), open_dataset(uri, version=1).count_rows()
(3, 2)
>>> sql_list([3, 1])
'3, 1'
"""

from __future__ import annotations

from collections.abc import Iterable

import lance
import pyarrow as pa
from lockgate.errors import StorageError

__all__ = ["append_table", "open_dataset", "sql_list", "table_uri"]


def table_uri(state: str, name: str) -> str:
    """Where table ``name`` lives under the state URI ``state``."""
    return f"{str(state).rstrip('/')}/{name}.lance"


def sql_list(values: Iterable[int]) -> str:
    """Integers as the inside of an SQL ``IN (...)`` for a Lance delete filter."""
    return ", ".join(str(int(v)) for v in values)


def open_dataset(uri: str, version: int | None = None) -> lance.LanceDataset | None:
    """The Lance dataset at ``uri`` (its latest version, or ``version``), or None when there is none.

    Any other failure to open it is a ``StorageError`` that names the URI.
    """
    try:
        return lance.dataset(uri, version=version)
    except (ValueError, FileNotFoundError, OSError) as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower() or isinstance(exc, FileNotFoundError):
            return None
        raise StorageError(f"cannot open the LanceDB table at {uri}: {exc}") from exc


#: table URIs this process has seen exist: appending to one needs no open first (an open reads
#: its latest manifest, 3-4 ms once a table has a few hundred versions)
_EXISTING: set[str] = set()


def append_table(uri: str, data: pa.Table) -> int:
    """Append ``data`` to the dataset at ``uri`` (creating it on first write); return the new version.

    A failure is a ``StorageError`` that names the URI.
    """
    try:
        mode = "append" if uri in _EXISTING or open_dataset(uri) is not None else "create"
        try:
            ds = lance.write_dataset(data, uri, mode=mode)
        except OSError as exc:
            if mode == "create" and "already exists" in str(exc).lower():  # a concurrent first writer won
                ds = lance.write_dataset(data, uri, mode="append")
            else:
                raise
    except (OSError, ValueError, RuntimeError) as exc:
        raise StorageError(f"cannot write the LanceDB table at {uri}: {exc}") from exc
    _EXISTING.add(uri)
    return ds.version
