"""A consumer on one queue over a ``Consume`` stream, and the deliveries it hands out.

The leader keeps up to ``prefetch`` deliveries unacknowledged on the stream and hands out
more as acks (sent on the same stream) free room, so a consumer does not wait a round trip
per message. Acks and nacks are queued and written in batches; the answers to them come
back on the stream in the order they were sent.

When the stream breaks (the leader died or stepped down), the consumer opens a new one
to whichever node leads now and sends again every ack and nack that was not answered:
an ack that had counted answers ``already_acked``, one that had not counts now, as long
as the delivery's lease still runs. Deliveries received but not yet handed to the caller
are kept: a leader killed outright leaves them leased, and they are processed and acked
as usual; a leader that handed them out again before stepping down sends them on the new
stream, and the newer delivery replaces the one kept.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from types import TracebackType

import grpc
import grpc.aio

from raftq import _convert as convert
from raftq._channel import Backoff, Router, Status
from raftq._errors import ConfigurationError, RaftqError
from raftq._model import AckResult, DeliveredMessageView, ReceivedMessage
from raftq._proto import message_pb2

_log = logging.getLogger("raftq")

#: The leader answers at least every 2 s (an empty answer when it has nothing else): a
#: stream silent this long is taken for broken and opened again.
SILENCE = 10.0


class _Settle:
    """An ack (``nack_delay_ms is None``) or a nack of one receipt, until answered."""

    __slots__ = ("future", "nack_delay_ms", "receipt")

    def __init__(self, receipt: str, nack_delay_ms: int | None, future: asyncio.Future[AckResult]):
        self.receipt = receipt
        self.nack_delay_ms = nack_delay_ms
        self.future = future

    def resolve(self, result: AckResult) -> None:
        if not self.future.done():
            self.future.set_result(result)
        if not result.ok:
            what = "ack" if self.nack_delay_ms is None else "nack"
            _log.warning(
                "%s of %s failed: %s: %s", what, self.receipt, result.code.name, result.error
            )


class Delivery(DeliveredMessageView):
    """One message handed out by a :class:`Consumer`, under a lease.

    Settle it once: :meth:`ack` (done), :meth:`nack` (hand back, optionally after a
    delay), :meth:`reject` (to the dead-letter queue), or let :meth:`process` do it.
    """

    __slots__ = ("_consumer", "_settled", "_superseded", "message")

    def __init__(self, consumer: Consumer, message: ReceivedMessage) -> None:
        self.message = message
        self._consumer = consumer
        self._settled = False
        self._superseded = False

    def __repr__(self) -> str:
        return f"<Delivery {self.message.receipt} of {self._consumer.queue!r}>"

    @property
    def queue(self) -> str:
        return self._consumer.queue

    @property
    def settled(self) -> bool:
        """Whether the delivery was acked, nacked or rejected already."""
        return self._settled

    def _claim(self) -> None:
        if self._settled:
            raise RaftqError(f"delivery {self.receipt} was settled already")
        self._settled = True

    async def ack(self, *, wait: bool = False) -> AckResult | None:
        """Acknowledges the delivery on the stream. The ack is written with the next
        batch; with ``wait`` this returns its result once the leader answered it (and
        raises when it failed, e.g. :class:`~raftq.FailedPrecondition` for a lease that
        had ended)."""
        self._claim()
        future = await self._consumer._settle(self.receipt, None)
        if not wait:
            return None
        result = await future
        result.raise_for_error()
        return result

    async def nack(self, *, delay: float = 0.0, wait: bool = False) -> AckResult | None:
        """Hands the delivery back: visible again at once, or after ``delay`` seconds (at
        most 12 h); its room on the stream is free at once. ``wait`` as for :meth:`ack`."""
        self._claim()
        future = await self._consumer._settle(self.receipt, convert.millis(delay, "delay"))
        if not wait:
            return None
        result = await future
        result.raise_for_error()
        return result

    async def reject(self, detail: str = "") -> bool:
        """Takes the message out of its queue for good, as one that can never be
        processed: to the dead-letter queue (reason ``rejected``, with ``detail``), or
        discarded when the queue has none. Returns whether it was dead-lettered."""
        self._claim()
        request = message_pb2.RejectRequest(queue=self.queue, receipt=self.receipt, detail=detail)
        response = await self._consumer._router.unary(
            self.queue, lambda node: node.messages.Reject, request
        )
        return response.dead_lettered

    async def extend_lease(self, lease: float) -> int:
        """Sets the lease to ``lease`` seconds from now (0.1 .. 12 h), for work that takes
        longer than the lease. Returns when the new lease ends (ms since the epoch)."""
        request = message_pb2.ExtendLeaseRequest(
            queue=self.queue, receipt=self.receipt, lease_ms=convert.millis(lease, "lease")
        )
        response = await self._consumer._router.unary(
            self.queue, lambda node: node.messages.ExtendLease, request
        )
        return response.lease_expires_at_ms

    def process(
        self,
        *,
        nack_delay: float = 0.0,
        reject_on: tuple[type[BaseException], ...] = (),
    ) -> Processing:
        """An async context manager that settles the delivery by how its block ends::

            async with delivery.process(nack_delay=5.0):
                await handle(delivery.body)

        It acks when the block completes; when the block raises it nacks (the message is
        delivered again after ``nack_delay`` seconds, with its attempt count up) or, for an
        exception of a type in ``reject_on``, rejects it to the dead-letter queue with the
        exception as the detail. The exception then propagates, as with aio-pika's
        ``message.process()``: catch it inside the ``async for`` loop to go on consuming.
        A delivery settled inside the block is left as it is.
        """
        return Processing(self, convert.millis(nack_delay, "nack_delay"), reject_on)


class Processing:
    """The context manager :meth:`Delivery.process` returns."""

    __slots__ = ("_delivery", "_nack_delay_ms", "_reject_on")

    def __init__(
        self,
        delivery: Delivery,
        nack_delay_ms: int,
        reject_on: tuple[type[BaseException], ...],
    ) -> None:
        self._delivery = delivery
        self._nack_delay_ms = nack_delay_ms
        self._reject_on = reject_on

    async def __aenter__(self) -> Delivery:
        return self._delivery

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        delivery = self._delivery
        if delivery.settled:
            return
        if exc is None:
            await delivery.ack()
        elif self._reject_on and isinstance(exc, self._reject_on):
            detail = f"{type(exc).__name__}: {exc}".encode()[:1024].decode("utf-8", "ignore")
            await delivery.reject(detail)
        else:
            delivery._claim()
            await delivery._consumer._settle(delivery.receipt, self._nack_delay_ms)


class Consumer:
    """Deliveries from one queue's consume stream, as an async iterator.

    Made by :meth:`raftq.aio.Client.consume`. Iterating opens the stream (following the
    leader as calls do); a broken stream is opened again within the client's retry
    deadline, and a refusal (an unknown queue, a bad option) or running out of retries
    raises from the iteration, after the deliveries already received.
    """

    def __init__(
        self,
        router: Router,
        queue: str,
        *,
        prefetch: int,
        max_messages: int,
        lease: float | None,
        on_close: Callable[[Consumer], None],
    ) -> None:
        self.queue = queue
        self._router = router
        self._on_close = on_close
        self._start = message_pb2.ConsumeRequest(
            start=message_pb2.ConsumeStart(
                queue=queue,
                prefetch=prefetch,
                max_messages=max_messages,
                lease_ms=convert.millis(lease, "lease") if lease is not None else 0,
            )
        )
        # Deliveries received and not handed out yet, in order, and the same by message
        # id (a newer delivery of the same message replaces the one kept).
        self._buffer: collections.deque[Delivery] = collections.deque()
        self._held: dict[int, Delivery] = {}
        # Acks and nacks not written yet, and those written on the stream and not
        # answered, in the order written (the stream answers each kind in order).
        self._to_write: collections.deque[_Settle] = collections.deque()
        self._acks_sent: collections.deque[_Settle] = collections.deque()
        self._nacks_sent: collections.deque[_Settle] = collections.deque()
        self._has_deliveries = asyncio.Event()
        self._has_writes = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failure: RaftqError | None = None
        self._closing = False
        self._closed = False
        # Whether the last stream ended as the server ends a closed one.
        self._ended_cleanly = False

    def __repr__(self) -> str:
        return f"<Consumer of {self.queue!r}>"

    # -- iteration -----------------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    async def __anext__(self) -> Delivery:
        self._ensure_started()
        while True:
            while self._buffer:
                delivery = self._buffer.popleft()
                if delivery._superseded:
                    continue
                if self._held.get(delivery.message_id) is delivery:
                    del self._held[delivery.message_id]
                return delivery
            if self._failure is not None:
                raise self._failure
            if self._closing:
                raise StopAsyncIteration
            self._has_deliveries.clear()
            await self._has_deliveries.wait()

    async def __aenter__(self) -> Consumer:
        self._ensure_started()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def buffered(self) -> int:
        """Deliveries received from the stream and not handed out yet."""
        return len(self._held)

    def _ensure_started(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"raftq consume {self.queue}"
            )

    # -- acks and nacks ------------------------------------------------------------------

    async def _settle(self, receipt: str, nack_delay_ms: int | None) -> asyncio.Future[AckResult]:
        """Queues an ack or nack for the stream; once the consumer is closed, makes the
        call instead. The future gets the result."""
        future: asyncio.Future[AckResult] = asyncio.get_running_loop().create_future()
        settle = _Settle(receipt, nack_delay_ms, future)
        if self._closing:
            await self._settle_by_calls([settle])
        else:
            self._to_write.append(settle)
            self._has_writes.set()
        return future

    async def _settle_by_calls(self, settles: list[_Settle]) -> None:
        """Acks (in batches) and nacks by unary calls, for what no stream can carry."""
        acks = [settle for settle in settles if settle.nack_delay_ms is None]
        for start in range(0, len(acks), convert.MAX_PER_CALL):
            chunk = acks[start : start + convert.MAX_PER_CALL]
            request = message_pb2.AckBatchRequest(
                queue=self.queue, receipts=[settle.receipt for settle in chunk]
            )
            try:
                response = await self._router.unary(
                    self.queue, lambda node: node.messages.AckBatch, request
                )
            except RaftqError as error:
                for settle in chunk:
                    settle.resolve(_failed(settle.receipt, error))
                continue
            for settle, result in zip(chunk, response.results, strict=False):
                settle.resolve(convert.ack_result(settle.receipt, result))
        for settle in settles:
            if settle.nack_delay_ms is None:
                continue
            nack = message_pb2.NackRequest(
                queue=self.queue, receipt=settle.receipt, delay_ms=settle.nack_delay_ms
            )
            try:
                await self._router.unary(self.queue, lambda node: node.messages.Nack, nack)
                settle.resolve(AckResult(settle.receipt, grpc.StatusCode.OK))
            except RaftqError as error:
                settle.resolve(_failed(settle.receipt, error))

    # -- the stream ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._pump()
        except asyncio.CancelledError:
            raise
        except RaftqError as error:
            self._fail(error)
        except Exception as error:  # a bug, not the cluster: do not hang the iteration
            _log.exception("the consumer of %r stopped", self.queue)
            self._fail(RaftqError(f"the consumer stopped: {error!r}"))
        finally:
            self._has_deliveries.set()

    async def _pump(self) -> None:
        """Opens streams and reads them, until the consumer closes or fails for good."""
        router = self._router
        backoff: Backoff | None = None
        while True:
            address = router.address_for(self.queue)
            node = router.node(address)
            call = node.messages.Consume(None, metadata=router.metadata)
            writer = asyncio.get_running_loop().create_task(self._write(call))
            status: Status
            try:
                while True:
                    try:
                        async with asyncio.timeout(SILENCE):
                            answer = await call.read()
                    except TimeoutError:
                        status = Status(
                            grpc.StatusCode.UNAVAILABLE,
                            f"the consume stream was silent for {SILENCE:.0f} s",
                        )
                        break
                    if not isinstance(answer, message_pb2.ConsumeResponse):
                        if self._closing:
                            self._ended_cleanly = True
                            return
                        status = Status(
                            grpc.StatusCode.UNAVAILABLE, "the node ended the consume stream"
                        )
                        break
                    backoff = None
                    self._take(answer)
            except grpc.aio.AioRpcError as error:
                status = Status.of(error)
            finally:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
                call.cancel()
            # What was written and not answered goes again, first, on the next stream.
            self._to_write.extendleft(reversed([*self._acks_sent, *self._nacks_sent]))
            self._acks_sent.clear()
            self._nacks_sent.clear()
            if self._closing:
                return
            if not status.retryable:
                # Refused: the leader applied the acks it had read and handed back the
                # stream's deliveries; acks not answered would be stale or repeats.
                refusal = status.error()
                while self._to_write:
                    settle = self._to_write.popleft()
                    settle.resolve(_failed(settle.receipt, refusal))
                raise refusal
            followed = router.reroute(self.queue, address, status.leader)
            if backoff is None:
                backoff = Backoff(router.settings)
            elif backoff.expired:
                raise status.error(outcome_unknown=True)
            _log.info(
                "consume stream of %r at %s broke (%s: %s); opening another",
                self.queue,
                address,
                status.code.name,
                status.message,
            )
            await backoff.wait(status, followed)

    async def _write(
        self,
        call: grpc.aio.StreamStreamCall[message_pb2.ConsumeRequest, message_pb2.ConsumeResponse],
    ) -> None:
        """Writes the start, then queued acks and nacks in batches; half-closes the stream
        once the consumer closes and everything is written."""
        try:
            await call.write(self._start)
            while True:
                while self._to_write:
                    await call.write(self._next_batch())
                self._has_writes.clear()
                if self._closing:
                    await call.done_writing()
                    return
                await self._has_writes.wait()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            # The stream broke (or ended); its reader sees why and opens another.
            pass

    def _next_batch(self) -> message_pb2.ConsumeRequest:
        """Takes the next run of acks, or of nacks with one delay (at most 1,000), off the
        queue of writes, and records them as sent."""
        first = self._to_write.popleft()
        batch = [first]
        while (
            self._to_write
            and len(batch) < convert.MAX_PER_CALL
            and self._to_write[0].nack_delay_ms == first.nack_delay_ms
        ):
            batch.append(self._to_write.popleft())
        receipts = [settle.receipt for settle in batch]
        if first.nack_delay_ms is None:
            self._acks_sent.extend(batch)
            return message_pb2.ConsumeRequest(ack=message_pb2.ConsumeAck(receipts=receipts))
        self._nacks_sent.extend(batch)
        return message_pb2.ConsumeRequest(
            nack=message_pb2.ConsumeNack(receipts=receipts, delay_ms=first.nack_delay_ms)
        )

    def _take(self, answer: message_pb2.ConsumeResponse) -> None:
        """Matches results to the acks and nacks sent, and keeps the deliveries."""
        for result in answer.ack_results:
            if not self._acks_sent:
                break
            settle = self._acks_sent.popleft()
            settle.resolve(convert.ack_result(settle.receipt, result))
        for result in answer.nack_results:
            if not self._nacks_sent:
                break
            settle = self._nacks_sent.popleft()
            settle.resolve(convert.ack_result(settle.receipt, result))
        if not answer.messages:
            return
        for proto in answer.messages:
            delivery = Delivery(self, convert.received(proto))
            kept = self._held.get(delivery.message_id)
            if kept is not None:
                kept._superseded = True
            self._held[delivery.message_id] = delivery
            self._buffer.append(delivery)
        self._has_deliveries.set()

    def _fail(self, error: RaftqError) -> None:
        if self._failure is None:
            self._failure = error

    # -- closing -------------------------------------------------------------------------

    async def close(self) -> None:
        """Ends the consumer: writes the acks and nacks given and waits for their results
        (at most the client's attempt timeout; what the stream cannot answer goes as
        calls), then ends the stream, on which the leader hands out again at once what
        the consumer received and did not settle."""
        if self._closing:
            return
        self._closing = True
        self._has_writes.set()
        self._has_deliveries.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), self._router.settings.attempt_timeout)
            except TimeoutError:
                pass
            except RaftqError:
                pass
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        leftovers = [*self._acks_sent, *self._nacks_sent, *self._to_write]
        self._acks_sent.clear()
        self._nacks_sent.clear()
        self._to_write.clear()
        try:
            if leftovers:
                await self._settle_by_calls(leftovers)
            if not self._ended_cleanly and task is not None:
                # No stream ended in order: hand back what was received and not handed
                # out, rather than leave it leased until its lease ends.
                unsettled = [d for d in self._buffer if not d._superseded and not d.settled]
                for delivery in unsettled:
                    delivery._settled = True
                await self._settle_by_calls(
                    [
                        _Settle(d.receipt, 0, asyncio.get_running_loop().create_future())
                        for d in unsettled
                    ]
                )
        except ConfigurationError:
            pass  # the client closed its connections first
        finally:
            self._buffer.clear()
            self._held.clear()
            self._closed = True
            self._on_close(self)


def _failed(receipt: str, error: RaftqError) -> AckResult:
    code = error.code if error.code is not None else grpc.StatusCode.UNKNOWN
    return AckResult(receipt, code, error.message)
