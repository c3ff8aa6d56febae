"""Our own errors: everything idv-cancel raises that is not a provider's answer.

A provider's answers have their own tree (``worker.providers.errors``: what a call to a
provider can end in, and which outcome each means). This one is for the rest — a request
or a session refused before it was sent, a broker that did not take a message, an
operator command that cannot be done, the audit archive, and the local machinery::

    IdvCancelError
    ├── InvalidInput (ValueError)          refused before anything was sent or stored
    │   ├── InvalidRequest                 a request breaks the contract or a provider
    │   │   │                              rule (producer side; ``code`` says which)
    │   │   └── InvalidRequests            several did (every bad line of a file)
    │   ├── InvalidSession                 a session report cannot be tracked
    │   └── RuleViolation                  a request breaks a provider's rule
    ├── BrokerError (ConnectionError)
    │   └── PublishNotConfirmed            RabbitMQ did not confirm every message of a batch
    ├── Unreachable (ConnectionError)      a service a command needs does not answer
    ├── DeadLetterError                    a replay that cannot be done (``exit_code``)
    │   ├── EntryNotFound
    │   └── NotReplayable
    ├── ArchiveError                       an audit archive run that must not go ahead
    │   ├── ArchiveBusy
    │   └── ArchiveMismatch
    └── LocalError (RuntimeError)          worker.local: what a machine without
        ├── RedisServerError               infrastructure starts for itself
        ├── RabbitNodeError
        ├── WorkerStartError
        └── DemoError                  the demo cannot run here (one line for a person)

Each is importable from here and from the module that raises it. ``except IdvCancelError``
catches ours and nothing else; every message is written for a person and never echoes a
request's values (a reason may hold personal data).
"""

from __future__ import annotations

__all__ = [
    "ArchiveBusy", "ArchiveError", "ArchiveMismatch", "BrokerError", "DeadLetterError", "DemoError",
    "EntryNotFound", "IdvCancelError", "InvalidInput", "InvalidRequest", "InvalidRequests",
    "InvalidSession", "LocalError", "NotReplayable", "PublishNotConfirmed", "RabbitNodeError",
    "RedisServerError", "RuleViolation", "Unreachable", "WorkerStartError",
]


class IdvCancelError(Exception):
    """The root of our own errors (a provider's are ``worker.providers.errors``)."""


# -- refused before anything was sent or stored ----------------------------------------


class InvalidInput(IdvCancelError, ValueError):
    """Input that breaks a rule; nothing was sent or stored."""


class InvalidRequest(InvalidInput):
    """A request the producer refuses: it breaks the contract, or a provider's rule (a
    ``RuleViolation`` is its ``__cause__``). ``index`` is its place in a batch, ``fields``
    the names of the fields at fault (empty when the whole value is wrong), ``code`` the
    ``error.code`` the worker's ``rejected`` result would carry: ``invalid_request``, or
    the rule's (``reason_required``, ``invalid_reference``, ...)."""

    def __init__(self, message: str, index: int | None = None,
                 fields: tuple[str, ...] = (), code: str = "invalid_request") -> None:
        super().__init__(message if index is None else f"request #{index}: {message}")
        self.index = index
        self.reason = message
        self.fields = fields
        self.code = code


class InvalidRequests(InvalidRequest):
    """Several requests of one batch break the contract; ``problems`` holds each one's
    ``InvalidRequest`` (its ``index`` a line number for a file), in order. It is itself
    the first of them, so code that catches ``InvalidRequest`` reads a sensible index."""

    def __init__(self, problems: list[InvalidRequest]) -> None:
        first = problems[0]
        super().__init__(first.reason, first.index, first.fields, first.code)
        self.problems = problems
        self.args = ("; ".join(str(p) for p in problems),)


class InvalidSession(InvalidInput):
    """A session report that cannot be tracked; the message says why (never echoing data)."""


class RuleViolation(InvalidInput):
    """The request breaks a provider rule: it ends ``rejected`` and no call is made
    (the producer refuses it before: ``InvalidRequest``). ``field`` is the request's field
    at fault, when one is."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


# -- the broker ------------------------------------------------------------------------


class BrokerError(IdvCancelError, ConnectionError):
    """The broker did not take what we sent."""


class PublishNotConfirmed(BrokerError):
    """The broker did not confirm every message of a batch (nack, or no answer in time).

    Some of the batch may be on the queue: sending it again is safe."""


class Unreachable(IdvCancelError, ConnectionError):
    """Redis or RabbitMQ did not answer; the message names which, where (password
    masked), the variable that says where, and why."""

    def __init__(self, service: str, where: str, variable: str, reason: str) -> None:
        super().__init__(f"cannot reach {service} at {where} ({variable}): {reason}")
        self.service = service


# -- operator commands -----------------------------------------------------------------


class DeadLetterError(IdvCancelError):
    """A replay that cannot be done; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class EntryNotFound(DeadLetterError):
    """No dead letter has this id."""

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no dead letter with id {entry_id!r}")


class NotReplayable(DeadLetterError):
    """The entry carries no request (an unreadable message) or its ledger is busy."""

    exit_code = 2


# -- the audit archive -----------------------------------------------------------------


class ArchiveError(IdvCancelError):
    """An archive run that could not (or must not) go ahead."""


class ArchiveBusy(ArchiveError):
    """Another archive run holds the lock (or took it over from this one)."""


class ArchiveMismatch(ArchiveError):
    """The archive directory does not hold the records Redis says were archived."""


# -- worker.local ----------------------------------------------------------------------


class LocalError(IdvCancelError, RuntimeError):
    """What a machine without infrastructure starts for itself failed."""


class RedisServerError(LocalError):
    """The embedded Redis server could not be found, started or stopped."""


class RabbitNodeError(LocalError):
    """The private RabbitMQ node could not be found, started, stopped or controlled."""


class WorkerStartError(LocalError):
    """A worker exited, or did not become ready in time; the message holds its log tail."""


class DemoError(LocalError):
    """The demo cannot run, or stopped: Redis or the broker is out of reach, it has no
    database of its own, a worker did not start. The message is one line, for a person."""
