"""A fault-injecting HTTP proxy between s3fs and the tests' S3 server (moto), on loopback.

Each request is matched against `Rule`s in order (HTTP method, a regex on the path, optionally a
header present); the first rule that fires decides what happens to it:

  slowdown  answer 503 SlowDown (the store's throttling answer) without forwarding
  cut       forward the request (the store applies it), then close the connection without a
            response: the client cannot know whether its request took effect
  truncate  forward, then send the headers and half the body, and close (a cut download)
  delay     wait `delay_s`, then forward
  strip     forward without the header `header` (a store that ignores If-None-Match)

A rule may also require a header or a regex on the request body (DeleteObjects names its keys
only there). A rule fires with probability `rate` (drawn from the proxy's seeded generator, under a lock) and
at most `times` times (None: unlimited). `FaultProxy.log` records (method, path, fault) for every
request, so a test can assert that the fault it meant did happen.
"""

from __future__ import annotations

import http.client
import random
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOP_BY_HOP = {"host", "connection", "transfer-encoding", "keep-alive"}
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")
KINDS = ("slowdown", "cut", "truncate", "delay", "strip")


@dataclass
class Rule:
    kind: str
    methods: tuple[str, ...] = ("GET", "PUT", "POST", "DELETE", "HEAD")
    path: str = ""                  # regex searched in the request path (with query string)
    header: str | None = None       # only requests carrying this header (case-insensitive)
    body: str = ""                  # regex searched in the request body (e.g. a key in a DeleteObjects)
    rate: float = 1.0
    times: int | None = None        # how often it may fire; None: no limit
    delay_s: float = 0.2
    fired: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}")
        self.methods = tuple(m.upper() for m in self.methods)
        self._path = re.compile(self.path)
        self._body = re.compile(self.body.encode()) if self.body else None

    def matches(self, method: str, path: str, headers, body: bytes | None) -> bool:
        if method not in self.methods or not self._path.search(path):
            return False
        if self._body is not None and not self._body.search(body or b""):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        return self.header is None or self.header.lower() in {k.lower() for k in headers.keys()}


class FaultProxy:
    """`with FaultProxy(upstream, rules, seed) as proxy:` ... `proxy.endpoint` is the URL to give
    s3fs (client_kwargs endpoint_url). Rules may be replaced while it runs (`proxy.rules = [...]`)."""

    def __init__(self, upstream: str, rules: list[Rule] | None = None, seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.rules = list(rules or [])
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.log: list[tuple[str, str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fault-proxy", daemon=True)

    def __enter__(self) -> "FaultProxy":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def storage_options(self, base: dict) -> dict:
        """`base` (the S3 server's storage options) pointed at this proxy."""
        return {**base, "client_kwargs": {**base.get("client_kwargs", {}), "endpoint_url": self.endpoint}}

    def decide(self, method: str, path: str, headers, body: bytes | None = None) -> Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.matches(method, path, headers, body) and self.random.random() < rule.rate:
                    rule.fired += 1
                    self.log.append((method, path, rule.kind))
                    return rule
            self.log.append((method, path, ""))
        return None

    def faults(self, kind: str | None = None) -> list[tuple[str, str, str]]:
        with self.lock:
            return [entry for entry in self.log if entry[2] and (kind is None or entry[2] == kind)]

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes | None):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()


def _handler_for(proxy: FaultProxy):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            rule = proxy.decide(self.command, self.path, self.headers, body)
            kind = rule.kind if rule else ""
            if kind == "slowdown":
                return self._reply(503, [("Content-Type", "application/xml")], SLOWDOWN_BODY)
            if kind == "delay":
                time.sleep(rule.delay_s)
            dropped = HOP_BY_HOP | ({rule.header.lower()} if kind == "strip" and rule.header else set())
            headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
            status, response_headers, data = proxy.forward(self.command, self.path, headers, body)
            if kind == "cut":
                return self._drop()
            if kind == "truncate" and self.command == "GET" and len(data) > 1:
                self._reply(status, response_headers, data, send=len(data) // 2)
                return self._drop()
            self._reply(status, response_headers, data)

        def _reply(self, status: int, headers, data: bytes, send: int | None = None) -> None:
            self.send_response(status)
            head = self.command == "HEAD"  # no body: the upstream's Content-Length is the object's size
            for key, value in headers:
                if key.lower() not in HOP_BY_HOP | ({"content-length"} - ({"content-length"} if head else set())):
                    self.send_header(key, value)
            if not head or not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data if send is None else data[:send])
                self.wfile.flush()

        def _drop(self) -> None:
            """Close the client's connection with nothing (more) sent."""
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve

        def log_message(self, *args) -> None:
            pass

    return Handler


def random_faults(rate: float) -> list[Rule]:
    """Rules under which about `rate` of all requests fail: 40 % of the faults 503 SlowDown, 30 %
    a response cut after the store applied the request, 15 % a download cut mid-body, 15 % a
    50 ms delay. (Each rule is tried only when those before it did not fire, hence the
    conditional probabilities.)"""
    rules, left = [], 1.0
    for kind, share, extra in (("slowdown", 0.4, {}), ("cut", 0.3, {}), ("truncate", 0.15, {"methods": ("GET",)}),
                               ("delay", 0.15, {"delay_s": 0.05})):
        rules.append(Rule(kind, rate=min(1.0, share * rate / left), **extra))
        left -= share * rate
    return rules
