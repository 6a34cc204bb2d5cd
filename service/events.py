"""Server-sent job events: one publisher per job, fanned out to every listener.

A stream used to poll the database itself, four times a second, inside the event loop: three
hundred streams made a thousand blocking queries a second and ``/healthz`` waited seconds
behind them. Now a job that has listeners has one publisher task, which reads the job in a
worker thread every ``event_poll_seconds`` and puts each change on its listeners' queues; a
stream only waits on its queue, sends a comment line as a heartbeat when nothing changed for
``event_heartbeat_seconds`` (so proxies and clients can tell a quiet job from a dead link),
and a tenant holds at most ``event_streams_per_tenant`` streams at once.

The hub lives in the API process; with several API processes each has its own publishers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi.concurrency import run_in_threadpool
from prometheus_client import CollectorRegistry, Gauge

from service.problems import Problem
from service.settings import Settings

log = logging.getLogger("modelpress.events")
QUEUE_SIZE = 32  # a listener this far behind misses intermediate progress, never the end

Event = tuple[str, str]  # (event name, JSON data)
Reader = Callable[[str], tuple[str, bool]]  # job id -> (record JSON, finished)


@dataclass
class _Channel:
    listeners: set[asyncio.Queue[Event]] = field(default_factory=set)
    latest: str | None = None


class EventHub:
    def __init__(self, settings: Settings, read: Reader, registry: CollectorRegistry) -> None:
        self.settings, self.read = settings, read
        self.channels: dict[str, _Channel] = {}
        self.streams: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self.open_streams = Gauge("modelpress_event_streams", "open job event streams", registry=registry)
        self.publishers = Gauge(
            "modelpress_event_publishers",
            "jobs with a publisher (one per job, whatever its listeners)",
            registry=registry,
        )

    def subscribe(self, tenant_id: str, job_id: str) -> Subscription:
        """A listener's queue on the job's channel; 429 past the tenant's stream cap."""
        cap = self.settings.event_streams_per_tenant
        if self.streams[tenant_id] >= cap:
            raise Problem(
                "too-many-streams",
                f"your account already has {cap} event streams open; close one, or poll "
                "GET /v1/jobs/{id} instead.",
                retry_after=5,
            )
        queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)
        channel = self.channels.get(job_id)
        if channel is None:
            channel = self.channels[job_id] = _Channel()
            task = asyncio.create_task(self._publish(job_id, channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif channel.latest is not None:
            queue.put_nowait(("progress", channel.latest))
        channel.listeners.add(queue)
        self.streams[tenant_id] += 1
        self._count()
        return Subscription(self, tenant_id, channel, queue)

    def _leave(self, subscription: Subscription) -> None:
        subscription.channel.listeners.discard(subscription.queue)
        self.streams[subscription.tenant_id] -= 1
        if not self.streams[subscription.tenant_id]:
            del self.streams[subscription.tenant_id]
        self._count()

    def _count(self) -> None:
        self.open_streams.set(sum(self.streams.values()))
        self.publishers.set(len(self.channels))

    async def _publish(self, job_id: str, channel: _Channel) -> None:
        ended = False
        try:
            while channel.listeners:
                data, finished = await run_in_threadpool(self.read, job_id)
                if data != channel.latest:
                    channel.latest = data
                    self._broadcast(channel, ("progress", data))
                if finished:
                    self._broadcast(channel, ("end", data))
                    ended = True
                    return
                await asyncio.sleep(self.settings.event_poll_seconds)
        except Exception as exc:  # the job was deleted, or the database is unreachable
            log.warning("event publisher for %s stopped: %r", job_id, exc)
        finally:
            # no await between the last broadcast and this: a listener that arrives later
            # finds no channel and starts a fresh publisher
            if self.channels.get(job_id) is channel:
                del self.channels[job_id]
            if not ended:  # the read failed: close the streams rather than leave them hanging
                self._broadcast(channel, ("close", ""))
            self._count()

    @staticmethod
    def _broadcast(channel: _Channel, event: Event) -> None:
        for queue in channel.listeners:
            if queue.full():  # a slow reader: drop its oldest progress, keep the newest
                queue.get_nowait()
            queue.put_nowait(event)


@dataclass
class Subscription:
    hub: EventHub
    tenant_id: str
    channel: _Channel
    queue: asyncio.Queue[Event]
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub._leave(self)

    async def sse(self, heartbeat: float) -> AsyncIterator[str]:
        """The text of the stream: each event, a heartbeat comment when quiet, then the end;
        the listener leaves when the stream ends or the client goes."""
        try:
            while True:
                try:
                    kind, data = await asyncio.wait_for(self.queue.get(), heartbeat)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if kind == "close":
                    return
                yield f"event: {kind}\ndata: {data}\n\n"
                if kind == "end":
                    return
        finally:
            self.close()
