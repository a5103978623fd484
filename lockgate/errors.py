"""The error hierarchy of lockgate.

Every error lockgate raises derives from :class:`LockgateError`; errors that the
user causes also derive from the matching built-in, so ``except ValueError``
keeps working.  Messages name the operator, the column and the fix.

Examples
--------
>>> from lockgate.errors import PipelineDefinitionError, LockgateError
>>> issubclass(PipelineDefinitionError, ValueError) and issubclass(PipelineDefinitionError, LockgateError)
True
"""

from __future__ import annotations

__all__ = [
    "AssignmentError",
    "BrokerError",
    "CommitError",
    "DecodeError",
    "KafkaOptionsError",
    "LockgateError",
    "PipelineDefinitionError",
    "StorageError",
]


class LockgateError(Exception):
    """Root of every error lockgate raises."""


class PipelineDefinitionError(ValueError, LockgateError):
    """A pipeline is defined wrongly; raised before any record is read."""


class DecodeError(ValueError, LockgateError):
    """A record value does not decode with the source's format."""


class KafkaOptionsError(ValueError, LockgateError):
    """librdkafka refused an option a Kafka client was built with (an unknown name or an invalid value)."""


class BrokerError(RuntimeError, LockgateError):
    """The local Kafka broker could not be started, reached or stopped."""


class RegistryError(RuntimeError, LockgateError):
    """The local schema registry could not be started, reached or stopped, or a schema could not be registered or found."""


class CommitError(RuntimeError, LockgateError):
    """A micro-batch could not be committed; nothing of it is visible."""


class AssignmentError(RuntimeError, LockgateError):
    """The partitions do not fit the pipeline.

    Either the consumer group gave this instance part of a topic that a window
    needs whole, or a topic declared keyed by a window's key (``pipe.source(...,
    key=...)``) has one key on several partitions.
    """


class StorageError(OSError, LockgateError):
    """A LanceDB table could not be read or written."""
