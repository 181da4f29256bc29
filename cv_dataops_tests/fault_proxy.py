"""A tiny HTTP proxy on loopback that sits between boto3 and moto's server and can be told to fail.

It forwards every request to the upstream endpoint unchanged, or, when told: answers ``503 SlowDown`` (S3's
throttling answer), closes connections without an answer, or refuses connections outright (its listening socket is
closed, so the client sees ECONNREFUSED), for a number of requests or a number of seconds. Tests use it to inject
real outages and 5xx answers into a real client against a real S3 API.
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade"}
SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    """``url`` forwards to ``upstream``; :meth:`fail_next`, :meth:`outage` and :meth:`heal` change how it answers."""

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream_host, self.upstream_port = parts.hostname or "127.0.0.1", parts.port or 80
        self._lock = threading.Lock()
        self._mode = "pass"  # pass | 503 | drop | refuse
        self._until = 0.0  # the mode ends at this monotonic time (0: until healed) ...
        self._remaining = 0  # ... or after this many requests (0: no count)
        self.counts: dict[str, int] = {"pass": 0, "503": 0, "drop": 0}
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._listen()

    # --- telling it what to do -------------------------------------------------------------------------------
    def fail_next(self, requests: int, mode: str = "503") -> None:
        """The next ``requests`` requests fail (``503`` or ``drop``), then it forwards again."""
        with self._lock:
            self._mode, self._remaining, self._until = mode, requests, 0.0

    def outage(self, mode: str, seconds: float | None = None) -> None:
        """Fail every request (``503``, ``drop`` or ``refuse``) for ``seconds``, or until :meth:`heal`."""
        with self._lock:
            self._mode, self._remaining = mode, 0
            self._until = time.monotonic() + seconds if seconds else 0.0
        if mode == "refuse":
            self._stop_listening()
            if seconds:
                threading.Timer(seconds, self.heal).start()

    def heal(self) -> None:
        with self._lock:
            self._mode, self._remaining, self._until = "pass", 0, 0.0
        if self._server is None:
            self._listen()

    def close(self) -> None:
        self._stop_listening()

    # --- machinery ---------------------------------------------------------------------------------------------
    def _decide(self) -> str:
        with self._lock:
            if self._mode != "pass" and self._until and time.monotonic() >= self._until:
                self._mode, self._until = "pass", 0.0
            mode = self._mode
            if mode != "pass" and self._remaining:
                self._remaining -= 1
                if self._remaining == 0:
                    self._mode = "pass"
            self.counts[mode] = self.counts.get(mode, 0) + 1
            return mode

    def _listen(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                mode = proxy._decide()
                if mode in ("drop", "refuse"):  # refuse: a request that was already connected when it began
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "503":
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(SLOW_DOWN)
                    return
                upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    upstream.request(self.command, self.path, body=body or None, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                finally:
                    upstream.close()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _stop_listening(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
