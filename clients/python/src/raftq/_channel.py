"""Connections to the nodes, the leader cache, and the retry loop every call goes through.

Any node accepts any call: a follower forwards it to the leader and names the leader in
the answer's ``raftq-leader-address`` metadata; a node that cannot serve a call answers
UNAVAILABLE, naming the leader when it knows one and how long to wait
(``raftq-retry-after-ms``). The router remembers the leader it was told about, per queue
(with data groups, each queue's Raft group has its own leader), so the next call goes
there directly, and sends a call again on a retryable answer until the retry deadline.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import grpc.aio

from raftq._config import Settings
from raftq._errors import (
    LEADER_ADDRESS_KEY,
    REASON_KEY,
    RETRY_AFTER_MS_KEY,
    RETRYABLE_CODES,
    ConfigurationError,
    RaftqError,
    error_for,
    metadata_value,
)
from raftq._proto import admin_pb2_grpc, message_pb2_grpc, queue_pb2_grpc

_log = logging.getLogger("raftq")

Request = TypeVar("Request")
Response = TypeVar("Response")

#: Most queues whose leader the router remembers; past it the oldest entry goes.
MAX_QUEUE_LEADERS = 10_000
#: Most nodes the router keeps a connection to (hints may name ever more addresses).
MAX_CONNECTIONS = 64
#: Largest request or response of the public API, both ways.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A node that was down is tried again soon after it comes back.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


#: How grpc describes an operation it could not start on a broken connection; it reports
#: it as INTERNAL, though no server said anything.
_BROKEN_LOCALLY = 'Failed "execute_batch"'


class Node:
    """A connection to one node and the stubs of its services."""

    def __init__(self, address: str, channel: grpc.aio.Channel) -> None:
        self.address = address
        self.channel = channel
        self.messages = message_pb2_grpc.MessageServiceStub(channel)
        self.queues = queue_pb2_grpc.QueueServiceStub(channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(channel)


class Status:
    """A failed attempt's status, whatever raised it."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        metadata: list[tuple[str, str | bytes]] | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.metadata = metadata or []

    @classmethod
    def of(cls, error: grpc.aio.AioRpcError) -> Status:
        metadata: list[tuple[str, str | bytes]] = []
        # Trailers carry a refusal's metadata; headers, when the server sent any.
        sources: tuple[Any, ...] = (error.trailing_metadata(), error.initial_metadata())
        for source in sources:
            for key, value in source or ():
                metadata.append((str(key), value))
        code, message = error.code(), error.details() or ""
        if code == grpc.StatusCode.INTERNAL and _BROKEN_LOCALLY in (
            error.debug_error_string() or ""
        ):
            # Not the server's answer: grpc failed to write on a connection that broke (the
            # node died). The outcome is unknown, as for any lost connection.
            code, message = grpc.StatusCode.UNAVAILABLE, f"the connection broke ({message})"
        return cls(code, message, metadata)

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE_CODES

    @property
    def leader(self) -> str | None:
        return metadata_value(self.metadata, LEADER_ADDRESS_KEY) or None

    @property
    def retry_after(self) -> float | None:
        value = metadata_value(self.metadata, RETRY_AFTER_MS_KEY)
        try:
            return int(value) / 1000 if value is not None else None
        except ValueError:
            return None

    def error(self, *, attempts: int = 1, outcome_unknown: bool = False) -> RaftqError:
        return error_for(
            self.code,
            self.message,
            reason=metadata_value(self.metadata, REASON_KEY),
            attempts=attempts,
            outcome_unknown=outcome_unknown,
        )


class Backoff:
    """The pauses between attempts, and the deadline they stop at."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._pause = settings.initial_backoff
        self.started = asyncio.get_running_loop().time()

    @property
    def elapsed(self) -> float:
        return asyncio.get_running_loop().time() - self.started

    @property
    def expired(self) -> bool:
        return self.elapsed >= self._settings.retry_deadline

    async def wait(self, status: Status, followed_hint: bool) -> None:
        """Pauses before the next attempt: not at all when it goes to a newly named
        leader, else for the server's ``raftq-retry-after-ms`` or the backoff (at most
        ``max_backoff``, and never past the deadline)."""
        pause = 0.0
        if not followed_hint:
            pause = min(status.retry_after or self._pause, self._settings.max_backoff)
        self._pause = min(self._pause * 2, self._settings.max_backoff)
        remaining = self._settings.retry_deadline - self.elapsed
        if pause > 0 and remaining > 0:
            await asyncio.sleep(min(pause, remaining))


class Router:
    """Connections, the leader cache and the retry loop shared by a client's calls."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metadata: tuple[tuple[str, str], ...] = ()
        if settings.token:
            self.metadata = (("authorization", f"Bearer {settings.token}"),)
        self._credentials = _credentials(settings)
        self._addresses = list(settings.addresses)
        self._nodes: dict[str, Node] = {}
        # The node calls go to first: the last known leader, or a seed address.
        self._preferred = self._addresses[0]
        self._next_seed = 1
        # Per queue, the node that last served (or was named as leading) its calls.
        self._queue_leaders: dict[str, str] = {}
        self._closed = False

    # -- where calls go ------------------------------------------------------------------

    def address_for(self, queue: str | None) -> str:
        """The node a call on ``queue`` goes to first (any call, for ``None``)."""
        if queue:
            return self._queue_leaders.get(queue, self._preferred)
        return self._preferred

    def node(self, address: str) -> Node:
        """The connection to ``address``, opened on first use."""
        if self._closed:
            raise ConfigurationError("the client is closed")
        node = self._nodes.get(address)
        if node is None:
            if len(self._nodes) >= MAX_CONNECTIONS:
                self._drop_oldest_connection()
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(
                    address, self._credentials, options=_CHANNEL_OPTIONS
                )
            else:
                channel = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
            node = Node(address, channel)
            self._nodes[address] = node
        return node

    def _drop_oldest_connection(self) -> None:
        keep = {self._preferred, *self._addresses}
        for address in list(self._nodes):
            if address not in keep:
                node = self._nodes.pop(address)
                asyncio.get_running_loop().create_task(node.channel.close(grace=1.0))
                return

    def remember(self, queue: str | None, leader: str) -> None:
        """Remembers ``leader`` as the node serving ``queue`` (every call, for ``None``)."""
        if not queue:
            self._preferred = leader
            return
        if self._queue_leaders.get(queue) == leader:
            return
        self._queue_leaders.pop(queue, None)
        if len(self._queue_leaders) >= MAX_QUEUE_LEADERS:
            del self._queue_leaders[next(iter(self._queue_leaders))]
        self._queue_leaders[queue] = leader

    def reroute(self, queue: str | None, address: str, hint: str | None) -> bool:
        """After a failed attempt at ``address``: go to the leader ``hint`` names, or try
        the next seed address. True when a new leader was named."""
        if hint and hint != address:
            self.remember(queue, hint)
            return True
        if queue:
            self._queue_leaders.pop(queue, None)
        self._preferred = self._addresses[self._next_seed % len(self._addresses)]
        self._next_seed += 1
        return False

    # -- calls ---------------------------------------------------------------------------

    async def unary(
        self,
        queue: str | None,
        method: Callable[[Node], grpc.aio.UnaryUnaryMultiCallable[Request, Response]],
        request: Request,
        *,
        extra_timeout: float = 0.0,
    ) -> Response:
        """Makes a unary call to the node serving ``queue`` (any node, for ``None``),
        following leader hints and retrying retryable answers until the retry deadline.

        Raises the :class:`~raftq.RaftqError` subclass of the final answer's code; one
        raised after retries ran out has ``outcome_unknown`` set.
        """
        settings = self.settings
        backoff = Backoff(settings)
        timeout = settings.attempt_timeout + extra_timeout
        attempts = 0
        while True:
            attempts += 1
            address = self.address_for(queue)
            try:
                call = method(self.node(address))(request, timeout=timeout, metadata=self.metadata)
                response = await call
                leader = metadata_value(await call.initial_metadata(), LEADER_ADDRESS_KEY)
                if leader and leader != address:
                    # A forwarded call: go to the leader directly next time.
                    self.remember(queue, leader)
                return response
            except grpc.aio.AioRpcError as error:
                status = Status.of(error)
            if not status.retryable:
                raise status.error(attempts=attempts)
            followed = self.reroute(queue, address, status.leader)
            if backoff.expired:
                raise status.error(attempts=attempts, outcome_unknown=True)
            _log.debug("retrying after %s from %s: %s", status.code.name, address, status.message)
            await backoff.wait(status, followed)

    async def close(self) -> None:
        """Closes every connection."""
        self._closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        await asyncio.gather(
            *(node.channel.close(grace=None) for node in nodes), return_exceptions=True
        )


def _credentials(settings: Settings) -> grpc.ChannelCredentials | None:
    """TLS credentials from the settings' PEM files, or ``None`` for plaintext."""
    if settings.ca_cert is None:
        return None

    def read(path: object, what: str) -> bytes:
        try:
            with open(str(path), "rb") as file:
                return file.read()
        except OSError as error:
            raise ConfigurationError(f"reading the {what} {path}: {error}") from error

    root = read(settings.ca_cert, "CA certificate")
    key = read(settings.client_key, "client key") if settings.client_key else None
    chain = read(settings.client_cert, "client certificate") if settings.client_cert else None
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )
