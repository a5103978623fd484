"""Lance primitives every storage module shares: where a table lives, open it, append to it.

Every lockgate table (window state, sink tables, the commit log) is one Lance
dataset under the state URI: a local directory or an object store
(``s3://bucket/prefix``, with the storage options registered for it).  This
module is the only one that opens or writes a dataset by URI; what the rows mean
is the business of the modules above it.

Examples
--------
>>> import tempfile, pyarrow as pa
>>> from lockgate.storage.lance_io import append_table, open_dataset, sql_list, table_uri
>>> uri = table_uri(tempfile.mkdtemp(), "t")
>>> open_dataset(uri) is None                       # not written yet
True
>>> first = append_table(uri, pa.table({"x": [1, 2]}))    # the table is created empty, then appended to
>>> second = append_table(uri, pa.table({"x": [3]}))
>>> second - first, open_dataset(uri).count_rows(), open_dataset(uri, version=first).count_rows()
(1, 3, 2)
>>> sql_list([3, 1])
'3, 1'
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import lance
from lance.commit import CommitConflictError
import pyarrow as pa
from lockgate.errors import StorageError

__all__ = ["append_table", "filesystem", "open_dataset", "sql_list", "storage_options", "table_uri", "use_storage_options"]


def table_uri(state: str, name: str) -> str:
    """Where table ``name`` lives under the state URI ``state``."""
    return f"{str(state).rstrip('/')}/{name}.lance"


def sql_list(values: Iterable[int]) -> str:
    """Integers as the inside of an SQL ``IN (...)`` for a Lance delete filter."""
    return ", ".join(str(int(v)) for v in values)


#: storage options (endpoint, region, keys ...) by state URI: every table under one uses them
_OPTIONS: dict[str, dict[str, str]] = {}


def use_storage_options(state: str, options: Mapping[str, str] | None) -> None:
    """Make every table under the state URI ``state`` open with Lance ``options`` (in this process).

    ``lg.Pipeline(state="s3://bucket/prefix", storage_options={...})`` calls it, as do
    ``read_table``/``read_state`` given ``storage_options=``; the options are Lance's
    object-store options (``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``,
    ``allow_http`` ...).  Without any, Lance reads the ``AWS_*`` variables.

    >>> use_storage_options("s3://bucket/prefix", {"region": "eu-west-1"})
    >>> storage_options("s3://bucket/prefix/_lockgate_commits.lance"), storage_options("s3://other/t.lance")
    ({'region': 'eu-west-1'}, None)
    """
    key = str(state).rstrip("/")
    if options:
        _OPTIONS[key] = {k: str(v) for k, v in options.items()}
    else:
        _OPTIONS.pop(key, None)


def storage_options(uri: str) -> dict[str, str] | None:
    """The storage options of the state URI that holds ``uri`` (the longest one registered), or None."""
    uri = str(uri)
    found = [state for state in _OPTIONS if uri == state or uri.startswith(state + "/")]
    return _OPTIONS[max(found, key=len)] if found else None


def open_dataset(uri: str, version: int | None = None) -> lance.LanceDataset | None:
    """The Lance dataset at ``uri`` (its latest version, or ``version``), or None when there is none.

    Any other failure to open it is a ``StorageError`` that names the URI.
    """
    try:
        return lance.dataset(uri, version=version, storage_options=storage_options(uri))
    except (ValueError, FileNotFoundError, OSError) as exc:
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower() or isinstance(exc, FileNotFoundError):
            return None
        raise StorageError(f"cannot open the LanceDB table at {uri}: {exc}") from exc


#: table URIs this process has seen exist: appending to one needs no open first (an open reads
#: its latest manifest, 3-4 ms once a table has a few hundred versions)
_EXISTING: set[str] = set()


def append_table(uri: str, data: pa.Table) -> int:
    """Append ``data`` to the dataset at ``uri`` (creating it on first write); return the new version.

    A table is created empty first (:func:`_create_empty`), then every write is an
    append: two instances that write a new table at the same moment on S3 must not
    lose a row (a plain create that lost the race to another was committed by Lance
    as an overwrite of the next version, replacing the rows written meanwhile).
    A failure is a ``StorageError`` that names the URI.
    """
    try:
        if uri not in _EXISTING and open_dataset(uri) is None:
            _create_empty(uri, data.schema)
        ds = lance.write_dataset(data, uri, mode="append", storage_options=storage_options(uri))
    except (OSError, ValueError, RuntimeError) as exc:
        raise StorageError(f"cannot write the LanceDB table at {uri}: {exc}") from exc
    _EXISTING.add(uri)
    return ds.version


@contextlib.contextmanager
def _first_version_only(version: int) -> Iterator[None]:
    """A commit lock that lets a create commit version 1 only: never an overwrite of a table another writer made."""
    if version != 1:
        raise CommitConflictError(f"the table exists already (a create would have been version {version})", retryable=False)
    yield


def _create_empty(uri: str, schema: pa.Schema) -> None:
    """Create the table at ``uri`` with no rows, unless another writer does first (then nothing happens).

    Creators race only for version 1, and each writes the same empty table, so
    whichever wins loses nothing; rows only ever come in appends.
    """
    try:
        lance.write_dataset(
            schema.empty_table(), uri, mode="create", storage_options=storage_options(uri), commit_lock=_first_version_only
        )
    except (OSError, ValueError, RuntimeError):
        if open_dataset(uri) is None:  # not a lost race: a real failure
            raise


def filesystem(uri: str) -> tuple[Any, str]:
    """A pyarrow filesystem and path for listing what is under ``uri``, with its storage options (S3 or local)."""
    import pyarrow.fs as pafs

    options = storage_options(uri) or {}
    if str(uri).startswith("s3://") and options:
        endpoint = options.get("endpoint") or options.get("aws_endpoint")
        fs = pafs.S3FileSystem(
            access_key=options.get("access_key_id") or options.get("aws_access_key_id"),
            secret_key=options.get("secret_access_key") or options.get("aws_secret_access_key"),
            session_token=options.get("session_token") or options.get("aws_session_token"),
            region=options.get("region") or options.get("aws_region") or "us-east-1",
            endpoint_override=endpoint.split("://", 1)[-1] if endpoint else None,
            scheme=endpoint.split("://", 1)[0] if endpoint and "://" in endpoint else "https",
        )
        return fs, str(uri).removeprefix("s3://")
    return pafs.FileSystem.from_uri(str(uri))
