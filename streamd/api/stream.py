"""GET /stream: new messages as Server-Sent Events, for the dashboard.

The API's Gunicorn workers are gthread workers: a response holds one of a worker's `api.threads`
threads for as long as it lasts. So a live feed must be bounded, in time and in number:

- each response ends after `api.stream_seconds`; the browser's EventSource reconnects by itself
  (after the `retry` delay below) and sends the id of the last event it got as Last-Event-ID, and the
  new response resumes after it. A viewer therefore holds a thread of one worker at a time, for a
  bounded time, and a worker being stopped ends its feeds within a poll instead of waiting for them;
- a worker serves at most `api.streams_per_worker` feeds at once, and never on its last thread;
  past that it answers 503 and the dashboard polls /messages instead until a feed is free again.
  A feed whose viewer has gone (the page switched source or closed) only notices on its next writes,
  a second or two later; a worker at its limit therefore first looks for such feeds (their socket
  reads end-of-file), ends them, and waits for their slots instead of refusing the viewer's new feed.

The store has no change feed streamd can rely on (FerretDB has no change streams), so each feed asks
the store for the newest messages once per POLL_SECONDS, walking the same (timestamp, _id) index as
/messages, and sends those it has not sent yet. A message is new to a feed when its id was not in the
previous look: one stored late with an older timestamp still shows up as long as it ranks among the
newest BACKLOG. The event id is the /messages cursor of the newest message sent so far.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime

import falcon
import orjson
from pymongo.errors import PyMongoError

from streamd.api.auth import READ
from streamd.api.backends import Backends
from streamd.api.errors import InvalidParameter
from streamd.api.messages import dated, render, time_limit_ms
from streamd.api.params import Cursor, MessageQuery, parse_collection, parse_cursor, reject_unknown, single
from streamd.config import ApiConfig
from streamd.metrics import series

log = logging.getLogger("streamd.api")

BACKLOG = 50  # messages sent when a feed opens, and how far down the newest a late message is noticed
POLL_SECONDS = 1.0
RETRY_MS = 1000  # the EventSource's reconnection delay once a response ends
BUSY_RETRY_SECONDS = 10
VANISHED_WAIT = 2.0  # longest a new feed waits for the slot of a feed whose viewer has gone
HUNG_UP = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class LiveStreams:
    """One worker's budget of open feeds, and whether the worker is still serving."""

    def __init__(self, settings: ApiConfig) -> None:
        # One thread always stays for /messages, /stats, /metrics and the probes.
        self.limit = max(0, min(settings.streams_per_worker, settings.threads - 1))
        self.seconds = settings.stream_seconds
        self.open = 0
        self.feeds: set[EventStream] = set()
        self._freed = threading.Condition()
        # Gunicorn's post_worker_init hook points this at the worker's `alive` flag.
        self.serving: Callable[[], bool] = lambda: True

    def acquire(self) -> bool:
        with self._freed:
            if self.open >= self.limit:
                vanished = [feed for feed in self.feeds if feed.viewer_gone()]
                for feed in vanished:
                    feed.end()
                if not vanished or not self._freed.wait_for(lambda: self.open < self.limit, VANISHED_WAIT):
                    return False
            self.open += 1
        series.OPEN_STREAMS.inc()
        return True

    def release(self) -> None:
        with self._freed:
            self.open -= 1
            self._freed.notify_all()
        series.OPEN_STREAMS.dec()

    def track(self, feed: EventStream) -> None:
        with self._freed:
            self.feeds.add(feed)

    def forget(self, feed: EventStream) -> None:
        with self._freed:
            self.feeds.discard(feed)


class StreamsBusy(falcon.HTTPServiceUnavailable):
    def __init__(self, limit: int) -> None:
        super().__init__(
            title="Live feeds busy",
            description=f"this worker already serves its {limit} live feeds (api.streams_per_worker); "
            "poll /messages meanwhile, or retry later.",
            retry_after=BUSY_RETRY_SECONDS,
        )


class StreamResource:
    scopes = {"GET": READ}

    def __init__(self, backends: Backends, streams: LiveStreams) -> None:
        self.backends = backends
        self.streams = streams

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        reject_unknown(req.params, ("source", "collection"))
        query = MessageQuery(
            limit=BACKLOG,
            source=single(req.params, "source"),
            collection=parse_collection(req.params, self.backends.collections),
        )
        resume = self.last_event(req)
        # A refused feed must cost nothing: a busy worker answers before it asks the store anything.
        if not self.streams.acquire():
            raise StreamsBusy(self.streams.limit)
        try:
            # The first look happens before the 200: a store that is down is a 503 the browser can see.
            first = self.newest(query)
        except BaseException:
            self.streams.release()
            raise
        resp.content_type = "text/event-stream"
        resp.cache_control = ["no-store"]
        resp.set_header("X-Accel-Buffering", "no")  # a reverse proxy must pass events on as they come
        resp.stream = EventStream(self, query, resume, first, req.env.get("gunicorn.socket"))

    def last_event(self, req: falcon.Request) -> Cursor | None:
        value = req.get_header("Last-Event-ID")
        if not value:
            return None
        try:
            return parse_cursor(value)
        except InvalidParameter:
            raise InvalidParameter(
                "Last-Event-ID", "is not an event id this API sent; reconnect without it to start afresh."
            ) from None

    def newest(self, query: MessageQuery) -> list[dict]:
        return dated(self.backends.store_of(query.collection).newest(query, BACKLOG, time_limit_ms(self.backends)))


class EventStream:
    """The body of one /stream response: a WSGI iterable whose close() always gives its slot back.

    Gunicorn calls close() however the response ends (finished, client gone, worker stopping), even
    when iteration never started, which a generator's `finally` alone would miss.
    """

    def __init__(
        self,
        resource: StreamResource,
        query: MessageQuery,
        resume: Cursor | None,
        first: list[dict],
        client: socket.socket | None = None,
    ) -> None:
        self.resource = resource
        self.query = query
        self.resume = resume
        self.first = first
        self.client = client  # the viewer's connection, when the server says which (Gunicorn does)
        self.ended = threading.Event()
        self.closed = False
        resource.streams.track(self)

    def viewer_gone(self) -> bool:
        """Whether the viewer hung up: the kernel already knows (FIN or reset), and says so without a wait.

        poll() and not a peeking recv(): the socket belongs to the thread serving the feed, and Python's
        recv() on a socket with a timeout would first wait for data an EventSource never sends.
        """
        if self.client is None:
            return False
        poller = select.poll()
        try:
            poller.register(self.client.fileno(), select.POLLRDHUP)
        except ValueError:
            return True  # already closed: the feed is ending anyway
        return any(events & HUNG_UP for _, events in poller.poll(0))

    def end(self) -> None:
        """Stop at the next poll instead of at the next failed write."""
        self.ended.set()

    def __iter__(self) -> Iterator[bytes]:
        streams = self.resource.streams
        deadline = time.monotonic() + streams.seconds
        newest = self.resume
        yield f"retry: {RETRY_MS}\n\n".encode()
        documents = fresh = self.first
        if self.resume is not None:
            mark = (self.resume.timestamp, self.resume.id)
            fresh = [d for d in documents if sort_key(d) > mark]
        while True:
            seen = {d["_id"] for d in documents}
            if fresh:
                chunk, newest = events(fresh, newest)
                yield chunk
            else:
                yield b":\n\n"  # a comment: finds a vanished client on the next write, within seconds
            if time.monotonic() + POLL_SECONDS > deadline or not streams.serving():
                return
            if self.ended.wait(POLL_SECONDS):
                return
            try:
                documents = self.resource.newest(self.query)
            except PyMongoError as exc:
                # The status line is long gone; ending lets the browser reconnect and meet a proper 503.
                log.warning("/stream ends early: the store failed (%s)", type(exc).__name__)
                return
            fresh = [d for d in documents if d["_id"] not in seen]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.resource.streams.forget(self)
            self.resource.streams.release()


def sort_key(document: dict) -> tuple[datetime, str]:
    return document["timestamp"], document["_id"]


def events(documents: list[dict], newest: Cursor | None) -> tuple[bytes, Cursor | None]:
    """SSE events for `documents`, oldest first; each carries the cursor of the newest message sent so far."""
    lines = []
    for document in sorted(documents, key=sort_key):
        key = sort_key(document)
        if newest is None or key > (newest.timestamp, newest.id):
            newest = Cursor(*key)
        lines.append(b"id: " + newest.encode().encode() + b"\ndata: " + orjson.dumps(render(document)) + b"\n\n")
    return b"".join(lines), newest
