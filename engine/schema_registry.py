"""A schema registry's subjects and ids, through confluent-kafka's ``SchemaRegistryClient`` (one per URL, its lookups cached).

The formats that read the Confluent wire format (:mod:`lockgate.engine.avro_format`)
ask here for the reader schema of a subject (when the pipeline is defined), for
the writer schema of each id they meet (once per id: the client caches it), and
register the schema a sink writes.  Errors name the subject or the id and the fix.

>>> registry_error_hint("http://127.0.0.1:1")
'is a registry running at http://127.0.0.1:1? `lockgate registry start` runs one on this machine (its URL: http://127.0.0.1:8081/apis/ccompat/v7)'
"""

from __future__ import annotations

import threading
from typing import Any

from lockgate.errors import PipelineDefinitionError, RegistryError

_clients: dict[str, Any] = {}
_lock = threading.Lock()
#: Confluent error codes
_SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND, _SCHEMA_NOT_FOUND = 40401, 40402, 40403


def client(url: str) -> Any:
    """The ``SchemaRegistryClient`` of ``url`` (one per process: its caches are shared)."""
    with _lock:
        found = _clients.get(url)
        if found is None:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            found = _clients[url] = SchemaRegistryClient({"url": url})
        return found


def registry_error_hint(url: str) -> str:
    """What to check when the registry at ``url`` does not answer."""
    return (f"is a registry running at {url}? `lockgate registry start` runs one on this machine "
            "(its URL: http://127.0.0.1:8081/apis/ccompat/v7)")


def latest(url: str, subject: str, where: str) -> tuple[int, str]:
    """The id and text of the latest schema of ``subject``; a definition error naming the subject when there is none."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        registered = client(url).get_latest_version(subject)
    except SchemaRegistryError as exc:
        if exc.error_code in (_SUBJECT_NOT_FOUND, _VERSION_NOT_FOUND) or exc.http_status_code == 404:
            raise PipelineDefinitionError(
                f"{where}: the registry at {url} has no subject {subject!r}; register the topic's schema there first, "
                "name another subject with subject=..., or give the reader schema with schema=..."
            ) from None
        raise RegistryError(f"{where}: the registry at {url} refused the lookup of {subject!r}: {exc}") from exc
    except Exception as exc:
        raise PipelineDefinitionError(f"{where}: could not reach the schema registry: {exc}; {registry_error_hint(url)}") from exc
    return int(registered.schema_id), str(registered.schema.schema_str)


def schema_by_id(url: str, schema_id: int) -> str | None:
    """The text of schema ``schema_id``, or None when the registry has no such id; :class:`RegistryError` when it cannot be asked."""
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        return str(client(url).get_schema(int(schema_id)).schema_str)
    except SchemaRegistryError as exc:
        if exc.error_code == _SCHEMA_NOT_FOUND or exc.http_status_code == 404:
            return None
        raise RegistryError(f"the registry at {url} refused the lookup of schema id {schema_id}: {exc}") from exc
    except Exception as exc:
        raise RegistryError(f"could not reach the schema registry for schema id {schema_id}: {exc}; {registry_error_hint(url)}") from exc


def register(url: str, subject: str, schema_text: str, schema_type: str, where: str) -> int:
    """Register ``schema_text`` under ``subject`` (or find it there); its id.  An incompatible schema is a definition error."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    try:
        return int(client(url).register_schema(subject, Schema(schema_text, schema_type)))
    except SchemaRegistryError as exc:
        if exc.http_status_code == 409:
            raise PipelineDefinitionError(
                f"{where}: the registry at {url} refuses the stream's schema under {subject!r} as incompatible with the "
                f"subject's earlier versions ({exc.error_message}); keep the columns compatible, or write to a new subject"
            ) from None
        raise RegistryError(f"{where}: the registry at {url} refused to register under {subject!r}: {exc}") from exc
    except Exception as exc:
        raise PipelineDefinitionError(f"{where}: could not reach the schema registry: {exc}; {registry_error_hint(url)}") from exc
