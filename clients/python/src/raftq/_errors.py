"""Exceptions: one class per gRPC status code, each carrying the server's message."""

from __future__ import annotations

from collections.abc import Iterable

import grpc

#: Response metadata naming the leader's public address (on UNAVAILABLE answers of a node
#: that does not lead, and on answers a follower forwarded).
LEADER_ADDRESS_KEY = "raftq-leader-address"
#: Response metadata on every UNAVAILABLE answer: milliseconds to wait before retrying.
RETRY_AFTER_MS_KEY = "raftq-retry-after-ms"
#: Response metadata on refusals whose code alone does not say what to do.
REASON_KEY = "raftq-reason"

#: Codes worth sending the same call again for: the cluster is electing, a node is down,
#: or an attempt ran out of time. The outcome of the failed attempt is unknown.
RETRYABLE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
    }
)

_Metadata = Iterable[tuple[str, str | bytes]]


def metadata_value(metadata: _Metadata | None, key: str) -> str | None:
    """The first value of ``key`` in gRPC metadata, as text."""
    if metadata is None:
        return None
    for name, value in metadata:
        if name == key:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    return None


class RaftqError(Exception):
    """Base of every error this package raises.

    Attributes:
        code: The gRPC status code of the server's answer (``None`` for errors raised by
            the client itself, such as bad settings).
        message: The server's message (the status details), or the client's own text.
        reason: The server's ``raftq-reason`` metadata, when it gave one (producer
            sequence refusals: ``sequence-gap``, ``sequence-applied``, ``producer-expired``).
        attempts: How many attempts the client made before raising.
        outcome_unknown: True when the client gave up retrying after answers that leave
            the outcome open (the call may or may not have taken effect).
    """

    code: grpc.StatusCode | None = None

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        reason: str | None = None,
        attempts: int = 1,
        outcome_unknown: bool = False,
    ) -> None:
        if code is not None:
            self.code = code
        self.message = message
        self.reason = reason
        self.attempts = attempts
        self.outcome_unknown = outcome_unknown
        super().__init__(message)

    def __str__(self) -> str:
        name = self.code.name if self.code is not None else "ERROR"
        text = f"{name}: {self.message}"
        if self.outcome_unknown:
            text += f" (gave up after {self.attempts} attempts; the outcome is unknown)"
        return text

    @property
    def retryable(self) -> bool:
        """Whether the code is one the client retries (the outcome was unknown)."""
        return self.code in RETRYABLE_CODES


class ConfigurationError(RaftqError):
    """The client's settings are unusable (no address, unreadable files, both a token and
    a token file)."""


class Cancelled(RaftqError):
    code = grpc.StatusCode.CANCELLED


class Unknown(RaftqError):
    code = grpc.StatusCode.UNKNOWN


class InvalidArgument(RaftqError):
    """A bad queue name, option, receipt or message (too large, too many headers, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class DeadlineExceeded(RaftqError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class NotFound(RaftqError):
    """An unknown queue, message id (redrive) or principal."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(RaftqError):
    """The queue or principal exists already."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PermissionDenied(RaftqError):
    """The principal's grants do not allow the call on the queue."""

    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(RaftqError):
    """A full queue, too many queues, or a node's admission limit."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class FailedPrecondition(RaftqError):
    """A stale receipt (its lease ended or the message was delivered again), a commit
    spanning Raft groups, or a producer sequence gap."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Aborted(RaftqError):
    code = grpc.StatusCode.ABORTED


class OutOfRange(RaftqError):
    code = grpc.StatusCode.OUT_OF_RANGE


class Unimplemented(RaftqError):
    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(RaftqError):
    code = grpc.StatusCode.INTERNAL


class Unavailable(RaftqError):
    """No leader, no quorum, a node down or stopping: raised once retries ran out."""

    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(RaftqError):
    code = grpc.StatusCode.DATA_LOSS


class Unauthenticated(RaftqError):
    """No token, a malformed one, or one that names no principal."""

    code = grpc.StatusCode.UNAUTHENTICATED


_BY_CODE: dict[grpc.StatusCode, type[RaftqError]] = {
    cls.code: cls
    for cls in (
        Cancelled,
        Unknown,
        InvalidArgument,
        DeadlineExceeded,
        NotFound,
        AlreadyExists,
        PermissionDenied,
        ResourceExhausted,
        FailedPrecondition,
        Aborted,
        OutOfRange,
        Unimplemented,
        Internal,
        Unavailable,
        DataLoss,
        Unauthenticated,
    )
    if cls.code is not None
}


def error_for(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    attempts: int = 1,
    outcome_unknown: bool = False,
) -> RaftqError:
    """The exception for a status: the class of its code, or :class:`RaftqError`."""
    cls = _BY_CODE.get(code, RaftqError)
    return cls(
        message,
        code=code,
        reason=reason,
        attempts=attempts,
        outcome_unknown=outcome_unknown,
    )


def code_from_number(number: int) -> grpc.StatusCode:
    """The status code with the numeric value ``number`` (as per-receipt results carry)."""
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN
