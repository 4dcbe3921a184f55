"""The synchronous client: the asyncio client run on a private event loop in a thread.

Every method hands its work to that loop and blocks until it is done, so the behaviour
(leader following, retries, idempotency keys, consume streams) is the asyncio client's.
A client may be used from several threads at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Self, TypeVar

from raftq._config import Settings
from raftq._errors import RaftqError
from raftq._model import (
    AckResult,
    ClusterStatus,
    CommitResult,
    Message,
    DeliveredMessageView,
    PeekedMessage,
    Principal,
    Queue,
    QueueOptions,
    ReceivedMessage,
    SendResult,
)
from raftq.aio._client import Client as AsyncClient
from raftq.aio._consumer import Consumer as AsyncConsumer
from raftq.aio._consumer import Delivery as AsyncDelivery
from raftq.aio._consumer import Processing as AsyncProcessing
from raftq.aio._transaction import Transaction as AsyncTransaction

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread of its own."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="raftq-client", daemon=True
        )
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Runs ``coroutine`` on the loop and waits for its result."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("the synchronous client cannot be called from its own loop")
        if self._loop.is_closed():
            coroutine.close()
            raise RaftqError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            # Interrupted (Ctrl-C) or failed: make sure the work stops too.
            future.cancel()
            raise

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


class _ClosedOnExit:
    """A ``with`` block closes it on the way out."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError


class Client(_ClosedOnExit):
    """A synchronous client of a raftq cluster; see :class:`raftq.aio.Client` for what
    each call does. Close it (or use it as a context manager) to stop its thread::

        with raftq.Client() as client:     # settings from the RAFTQ_* variables
            client.send("orders", b"order #1")
            for delivery in client.consume("orders", prefetch=100):
                with delivery.process():
                    handle(delivery.body)
    """

    def __init__(self, settings: Settings | None = None) -> None:
        """A client with ``settings``, or with :meth:`Settings.from_env` when none."""
        self._loop = _Loop()
        try:
            self._client = AsyncClient(settings)
        except BaseException:
            self._loop.close()
            raise
        self.settings = self._client.settings

    def close(self) -> None:
        """Closes open consumers, every connection, and the client's thread."""
        try:
            self._loop.run(self._client.close())
        except RaftqError:
            pass
        finally:
            self._loop.close()

    def leader_for(self, queue: str | None = None) -> str:
        return self._client.leader_for(queue)

    def send(self, queue: str, message: Message | bytes | str) -> SendResult:
        return self._loop.run(self._client.send(queue, message))

    def send_batch(self, queue: str, messages: Iterable[Message | bytes | str]) -> list[SendResult]:
        return self._loop.run(self._client.send_batch(queue, list(messages)))

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        lease: float | None = None,
        message_id: int = 0,
        correlation_id: str = "",
    ) -> list[ReceivedMessage]:
        return self._loop.run(
            self._client.receive(
                queue,
                max_messages,
                wait=wait,
                lease=lease,
                message_id=message_id,
                correlation_id=correlation_id,
            )
        )

    def ack_and_receive(
        self,
        queue: str,
        receipts: Sequence[str],
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        lease: float | None = None,
    ) -> tuple[list[AckResult], list[ReceivedMessage]]:
        return self._loop.run(
            self._client.ack_and_receive(queue, receipts, max_messages, wait=wait, lease=lease)
        )

    def consume(
        self,
        queue: str,
        *,
        prefetch: int = 0,
        max_messages: int = 0,
        lease: float | None = None,
    ) -> Consumer:
        """A consumer on ``queue`` (see :meth:`raftq.aio.Client.consume`); iterate it."""

        async def make() -> AsyncConsumer:
            return self._client.consume(
                queue, prefetch=prefetch, max_messages=max_messages, lease=lease
            )

        return Consumer(self._loop, self._loop.run(make()))

    def ack(self, queue: str, receipt: str) -> bool:
        return self._loop.run(self._client.ack(queue, receipt))

    def ack_batch(self, queue: str, receipts: Sequence[str]) -> list[AckResult]:
        return self._loop.run(self._client.ack_batch(queue, receipts))

    def nack(self, queue: str, receipt: str, *, delay: float = 0.0) -> int:
        return self._loop.run(self._client.nack(queue, receipt, delay=delay))

    def extend_lease(self, queue: str, receipt: str, lease: float) -> int:
        return self._loop.run(self._client.extend_lease(queue, receipt, lease))

    def reject(self, queue: str, receipt: str, detail: str = "") -> bool:
        return self._loop.run(self._client.reject(queue, receipt, detail))

    def peek(
        self,
        queue: str,
        *,
        after_sequence: int = 0,
        max_messages: int = 0,
        message_id: int = 0,
        correlation_id: str = "",
    ) -> list[PeekedMessage]:
        return self._loop.run(
            self._client.peek(
                queue,
                after_sequence=after_sequence,
                max_messages=max_messages,
                message_id=message_id,
                correlation_id=correlation_id,
            )
        )

    def redrive(
        self,
        queue: str,
        *,
        message_ids: Sequence[int] = (),
        max_messages: int = 0,
        to: str = "",
    ) -> int:
        return self._loop.run(
            self._client.redrive(queue, message_ids=message_ids, max_messages=max_messages, to=to)
        )

    def transaction(self) -> Transaction:
        """A transaction (see :meth:`raftq.aio.Client.transaction`), committed when its
        ``with`` block completes and aborted when it raises."""
        return Transaction(self._loop, self._client.transaction())

    def commit(
        self,
        transaction_id: str,
        *,
        acks: Sequence[tuple[str, str]] = (),
        sends: Sequence[tuple[str, Message | bytes | str]] = (),
    ) -> CommitResult:
        return self._loop.run(self._client.commit(transaction_id, acks=acks, sends=sends))

    def create_queue(
        self, name: str, options: QueueOptions | None = None, *, colocate_with: str = ""
    ) -> Queue:
        return self._loop.run(self._client.create_queue(name, options, colocate_with=colocate_with))

    def get_queue(self, name: str) -> Queue:
        return self._loop.run(self._client.get_queue(name))

    def list_queues(self, *, after: str = "", limit: int | None = None) -> list[Queue]:
        return self._loop.run(self._client.list_queues(after=after, limit=limit))

    def delete_queue(self, name: str) -> None:
        self._loop.run(self._client.delete_queue(name))

    def purge_queue(self, name: str) -> int:
        return self._loop.run(self._client.purge_queue(name))

    def cluster_status(self) -> ClusterStatus:
        return self._loop.run(self._client.cluster_status())

    def create_principal(self, name: str) -> str:
        return self._loop.run(self._client.create_principal(name))

    def delete_principal(self, name: str) -> None:
        self._loop.run(self._client.delete_principal(name))

    def list_principals(self) -> list[Principal]:
        return self._loop.run(self._client.list_principals())

    def grant(self, name: str, queue: str, actions: Sequence[str]) -> Principal:
        return self._loop.run(self._client.grant(name, queue, actions))

    def revoke(self, name: str, queue: str) -> bool:
        return self._loop.run(self._client.revoke(name, queue))


class Consumer(_ClosedOnExit):
    """Deliveries from one queue's consume stream, as an iterator; see
    :class:`raftq.aio.Consumer`. Close it (or use it as a context manager) to hand back at
    once what it holds unprocessed."""

    def __init__(self, loop: _Loop, consumer: AsyncConsumer) -> None:
        self._loop = loop
        self._consumer = consumer
        self.queue = consumer.queue

    def __iter__(self) -> Iterator[Delivery]:
        return self

    def __next__(self) -> Delivery:
        async def following() -> AsyncDelivery | None:
            try:
                return await self._consumer.__anext__()
            except StopAsyncIteration:
                return None

        delivery = self._loop.run(following())
        if delivery is None:
            raise StopIteration
        return Delivery(self._loop, delivery)

    def close(self) -> None:
        self._loop.run(self._consumer.close())


class Delivery(DeliveredMessageView):
    """One message handed out by a :class:`Consumer`; see :class:`raftq.aio.Delivery`."""

    __slots__ = ("_delivery", "_loop", "message")

    def __init__(self, loop: _Loop, delivery: AsyncDelivery) -> None:
        self._loop = loop
        self._delivery = delivery
        self.message = delivery.message

    def __repr__(self) -> str:
        return repr(self._delivery)

    @property
    def queue(self) -> str:
        return self._delivery.queue

    @property
    def settled(self) -> bool:
        return self._delivery.settled

    def ack(self, *, wait: bool = False) -> AckResult | None:
        return self._loop.run(self._delivery.ack(wait=wait))

    def nack(self, *, delay: float = 0.0, wait: bool = False) -> AckResult | None:
        return self._loop.run(self._delivery.nack(delay=delay, wait=wait))

    def reject(self, detail: str = "") -> bool:
        return self._loop.run(self._delivery.reject(detail))

    def extend_lease(self, lease: float) -> int:
        return self._loop.run(self._delivery.extend_lease(lease))

    def process(
        self,
        *,
        nack_delay: float = 0.0,
        reject_on: tuple[type[BaseException], ...] = (),
    ) -> Processing:
        """A context manager that acks when its block completes and nacks (or, for
        ``reject_on`` exceptions, rejects) when it raises; the exception propagates. See
        :meth:`raftq.aio.Delivery.process`."""
        return Processing(self, self._delivery.process(nack_delay=nack_delay, reject_on=reject_on))


class Processing:
    """The context manager :meth:`Delivery.process` returns."""

    __slots__ = ("_delivery", "_processing")

    def __init__(self, delivery: Delivery, processing: AsyncProcessing) -> None:
        self._delivery = delivery
        self._processing = processing

    def __enter__(self) -> Delivery:
        return self._delivery

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._delivery._loop.run(self._processing.__aexit__(exc_type, exc, traceback))


class Transaction:
    """A transaction in progress; see :class:`raftq.aio.Transaction`."""

    def __init__(self, loop: _Loop, transaction: AsyncTransaction) -> None:
        self._loop = loop
        self._transaction = transaction

    @property
    def id(self) -> str:
        return self._transaction.id

    @property
    def result(self) -> CommitResult | None:
        return self._transaction.result

    def __enter__(self) -> Transaction:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._loop.run(self._transaction.__aexit__(exc_type, exc, traceback))

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        *,
        wait: float = 0.0,
        lease: float | None = None,
    ) -> list[ReceivedMessage]:
        return self._loop.run(
            self._transaction.receive(queue, max_messages, wait=wait, lease=lease)
        )

    def ack(self, queue: str, receipt: str) -> None:
        self._transaction.ack(queue, receipt)

    def send(self, queue: str, message: Message | bytes | str) -> None:
        self._transaction.send(queue, message)

    def commit(self) -> CommitResult:
        return self._loop.run(self._transaction.commit())

    def abort(self) -> None:
        self._loop.run(self._transaction.abort())


__all__ = ["Client", "Consumer", "Delivery", "Processing", "Transaction"]
