"""The API's Gunicorn worker: gthread's, with the health probes served apart and parser errors in JSON.

Probes. A gthread worker serves every request on one pool of `api.threads` threads, so when slow
requests hold all of them (live feeds, /stats on a large store, a burst of clients) /health and
/ready wait behind them and a load balancer takes a working API out. This worker reads a
connection's next request head with MSG_PEEK before choosing a pool: the bytes stay in the kernel for
Gunicorn's parser, and a complete `GET` or `HEAD` of /health or /ready without a body goes to a
one-thread pool of its own, everything else to the shared pool as before. A probe is still served by
the Falcon app (same answer, same errors, counted by the request metrics) and its connection is
kept alive the usual way; its next request is looked at again.

For the first request to be looked at, a connection accepted before its request arrived waits in
the worker's poller instead of on a pool thread (gthread parks it on a thread for up to 5 s). And the
main loop, which hands every request to its pool, must never wait: gthread closes a connection it
will not keep alive by lingering up to 2 s for the client to hang up (so that unread request bytes
do not turn into a reset), on that loop; ten clients that keep their socket open after a
`Connection: close` answer held every probe for 20 s. Here the linger happens in the poller too.

HTTPS (api.tls_cert_file). Encrypted bytes cannot be peeked at, so over TLS every request takes the
shared pool, probes included: there, probes keep their own threads only on a plain-HTTP API (behind a
TLS-terminating proxy, say). A new connection still waits in the poller for its ClientHello, and a
closing one still lingers in the poller, as over plain HTTP.

Parser errors. Gunicorn answers a request it cannot parse (400, 414, 431…) with an HTML page
written by `handle_error`; this worker keeps Gunicorn's classification and logging and sends the
error as JSON, like every other error of the API.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

import orjson
from gunicorn import util
from gunicorn.workers.gthread import DEFAULT_WORKER_DATA_TIMEOUT, STOP_KEEPALIVE_LINGER, TConn, ThreadWorker

# A probe's head is a few hundred bytes; a longer one is not a probe anyone sends.
PEEK_BYTES = 4096
PROBE_LINE = re.compile(rb"(?:GET|HEAD) /(health|ready)(?:\?[^ \r\n]*)? HTTP/1\.[01]\r\n")
BODY_HEADER = re.compile(rb"\r\n(transfer-encoding|content-length)[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)
HEAD_END = b"\r\n\r\n"
PROBES = ("health", "ready")
DETAIL_LIMIT = 160
# What gunicorn.util.close_graceful allows a closing client: this long, this many unread bytes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 65536


def probe_of(head: bytes) -> str | None:
    """`health` or `ready` when `head` starts with a whole probe request a thread can answer at once.

    Only a complete head without a body qualifies: a probe thread must never wait for a client to
    finish sending. Anything else (a partial or unusual request) takes the shared pool, where it is
    served exactly as before.
    """
    line = PROBE_LINE.match(head)
    end = head.find(HEAD_END)
    if line is None or end < 0:
        return None
    for name, value in BODY_HEADER.findall(head[: end + 2]):
        if name.lower() == b"transfer-encoding" or value.strip() != b"0":
            return None
    return line.group(1).decode()


class ApiWorker(ThreadWorker):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.probe_pools: dict[str, ThreadPoolExecutor] = {}
        self.arriving: deque[TConn] = deque()  # accepted, first request not received yet
        self.lingering: deque[Lingering] = deque()  # answered and half-closed, waiting for the client's FIN
        self.stop_deadline: float | None = None

    def init_process(self) -> None:
        # Before gthread's init_process, which ends in run() and never returns.
        self.probe_pools = {name: ThreadPoolExecutor(1, thread_name_prefix=f"probe-{name}") for name in PROBES}
        super().init_process()

    def run(self) -> None:
        try:
            super().run()
        finally:
            for pool in self.probe_pools.values():
                pool.shutdown(wait=False)
            while self.lingering:
                self.lingering.popleft().conn.close()

    def handle_quit(self, sig: int, frame: Any) -> None:
        for pool in self.probe_pools.values():
            pool.shutdown(wait=False)
        super().handle_quit(sig, frame)

    # --- routing (all on the worker's main thread) ------------------------------------------------

    def enqueue_req(self, conn: TConn) -> None:
        if conn.is_http2:
            super().enqueue_req(conn)  # framed bytes say nothing readable here
            return
        if self.cfg.is_ssl:
            self.enqueue_encrypted(conn)
            return
        head = self.request_head(conn)
        if head is None and not conn.initialized and not conn.data_ready:
            self.await_request(conn)
            return
        probe = probe_of(head or b"")
        if probe is None:
            super().enqueue_req(conn)
            return
        conn.data_ready = True
        future = self.probe_pools[probe].submit(self.handle, conn)
        future.add_done_callback(partial(self.probe_done, conn))

    def enqueue_encrypted(self, conn: TConn) -> None:
        """HTTPS: encrypted bytes name no route, so every request takes the shared pool, probes included.

        A new connection still waits in the poller until its first bytes (the TLS ClientHello) arrive:
        before the handshake its socket is the plain one, which can be peeked at. Once wrapped, it cannot
        (an SSL socket refuses recv flags), and it goes to the pool whenever the poller finds it readable.
        """
        if not conn.initialized and not conn.data_ready and self.request_head(conn) is None:
            self.await_request(conn)
            return
        super().enqueue_req(conn)

    def probe_done(self, conn: TConn, future: Future) -> None:
        self.method_queue.defer(self.finish_request, conn, future)

    def request_head(self, conn: TConn) -> bytes | None:
        """What the client has sent of its next request, without taking it; None while nothing came."""
        buffered = conn.parser.unreader.buf.getvalue() if conn.parser is not None else b""
        try:
            return buffered + conn.sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return buffered or None
        except OSError:
            return buffered  # a reset connection: the shared pool's parser reports it as usual

    def await_request(self, conn: TConn) -> None:
        # As long as gthread would have let the client take: a thread's wait, then the pending one.
        conn.timeout = time.monotonic() + DEFAULT_WORKER_DATA_TIMEOUT + self.cfg.keepalive
        conn.sock.setblocking(False)
        self.arriving.append(conn)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_arriving_socket_readable, conn))

    def on_arriving_socket_readable(self, conn: TConn, client: socket.socket) -> None:
        self.poller.unregister(client)
        self.arriving.remove(conn)
        conn.data_ready = True
        self.enqueue_req(conn)

    def finish_request(self, conn: TConn, fs: Future) -> None:
        # handle() returned False: the connection ends. Kept-alive and deferred ones are gthread's business.
        closing = not fs.cancelled() and fs.exception() is None and not fs.result()
        if not closing:
            super().finish_request(conn, fs)
            return
        self.nr_conns -= 1
        try:
            # The FIN: the answer is complete. On an SSL socket, shutdown() drops the TLS session first, as
            # gthread's own close does, so what is drained below is the client's raw bytes either way.
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        conn.sock.setblocking(False)
        lingering = Lingering(conn, time.monotonic() + LINGER_SECONDS)
        self.lingering.append(lingering)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_lingering_socket_readable, lingering))

    def on_lingering_socket_readable(self, lingering: Lingering, client: socket.socket) -> None:
        try:
            data = client.recv(LINGER_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        lingering.drained += len(data)
        if data and lingering.drained < LINGER_BYTES:
            return
        self.poller.unregister(client)
        self.lingering.remove(lingering)
        lingering.conn.close()

    def murder_pending(self) -> None:
        # gthread calls this on every turn of its loop, running or stopping: our waiting lists expire here too.
        super().murder_pending()
        self.expire_lingering()
        self.expire_arriving()

    def expire_lingering(self) -> None:
        now = time.monotonic()
        while self.lingering and self.lingering[0].deadline <= now:
            lingering = self.lingering.popleft()
            try:
                self.poller.unregister(lingering.conn.sock)
            except (OSError, KeyError, ValueError):
                pass  # already unregistered
            lingering.conn.close()

    def expire_arriving(self) -> None:
        now = time.monotonic()
        if not self.alive and self.stop_deadline is None:
            # A stopping worker waits for a first request no longer than for a kept-alive one's next.
            self.stop_deadline = now + STOP_KEEPALIVE_LINGER
        stopped = self.stop_deadline is not None and now >= self.stop_deadline
        while self.arriving and (stopped or self.arriving[0].timeout <= now):
            conn = self.arriving.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass  # already unregistered
            self.nr_conns -= 1
            conn.close()

    # --- errors -----------------------------------------------------------------------------------

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        page = ErrorPage()
        super().handle_error(req, page, addr, exc)
        if page.status is None:
            return
        try:
            util.write_nonblock(client, json_error(page.status, page.reason, exc))
        except Exception:
            self.log.debug("Failed to send error message.")


class Lingering:
    """A closing connection: its FIN is sent, and unread request bytes are drained until the client's arrives."""

    def __init__(self, conn: TConn, deadline: float) -> None:
        self.conn = conn
        self.deadline = deadline
        self.drained = 0


class ErrorPage:
    """Stands in for the client socket while Gunicorn writes its HTML error: keeps only the status line."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.reason = ""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        _, status, self.reason = (line.split(" ", 2) + ["", ""])[:3]
        self.status = int(status)


def json_error(status: int, reason: str, exc: BaseException) -> bytes:
    """A whole HTTP response: the error in the API's JSON shape, and the connection closed after it."""
    if status >= 500 and status != 501:
        description = "the API hit an unexpected error; it is in the api log."
    else:
        detail = str(exc) if len(str(exc)) <= DETAIL_LIMIT else str(exc)[:DETAIL_LIMIT] + "…"
        description = f"the request could not be read ({detail}); send a well-formed HTTP/1.1 request."
    body = orjson.dumps({"status": status, "title": reason, "description": description})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body
