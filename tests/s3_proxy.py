"""A loopback HTTP proxy in front of an S3 API (a moto server): the tests and the benchmarks point
``AWS_ENDPOINT_URL`` at it to count the requests every process makes, add a latency to each, and answer a share of
them (or every one for some keys) with S3's ``503 SlowDown``, or drop their connection, as throttled object
storage does.

    proxy = S3Proxy("http://127.0.0.1:<moto port>").start()
    proxy.latency_s, proxy.slowdown_share = 0.03, 0.1
    ... run something against proxy.url ...
    proxy.counts   # requests by kind: GET, HEAD, PUT, LIST, POST, DELETE (answered with 503 ones included)
    proxy.areas = {"parts": re.compile("/_work/(chunks|videos)/")}
    proxy.by_area  # requests by (area, kind): the first area whose pattern the path (or listed prefix) matches, else "other"
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections import Counter
from urllib.parse import unquote

from aiohttp import ClientSession, web

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>proxy</RequestId></Error>"
)
# Headers a proxy must not copy between the two connections (hop-by-hop, or recomputed by aiohttp).
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "expect"}
# S3 request prices (USD per 1,000; us-east-1 standard): PUT, COPY, POST and LIST in one class, GET and the rest
# (HEAD) in the other; DELETE is free.
PRICE_PER_1000 = {"PUT": 0.005, "LIST": 0.005, "POST": 0.005, "GET": 0.0004, "HEAD": 0.0004, "DELETE": 0.0}


def request_kind(method: str, query: dict) -> str:
    if method == "GET" and ("list-type" in query or "delimiter" in query or "prefix" in query):
        return "LIST"
    return method


class S3Proxy:
    def __init__(self, upstream: str, port: int = 0, latency_s: float = 0.0, slowdown_share: float = 0.0, reset_share: float = 0.0, seed: int = 0):
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.latency_s, self.slowdown_share, self.reset_share = latency_s, slowdown_share, reset_share
        self.refused_keys: re.Pattern | None = None  # every request to a matching path is answered 503
        self.counts: Counter = Counter()
        self.areas: dict[str, re.Pattern] = {}
        self.by_area: Counter = Counter()
        self.throttled = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        """Zero the counts and make the proxy plain again (no latency, no faults)."""
        with self._lock:
            self.counts.clear()
            self.by_area.clear()
            self.throttled = 0
        self.latency_s = self.slowdown_share = self.reset_share = 0.0
        self.refused_keys = None

    def total(self) -> int:
        return sum(self.counts.values())

    def cost_usd(self) -> float:
        return sum(PRICE_PER_1000.get(kind, 0.0) * count / 1000 for kind, count in self.counts.items())

    def _fault(self, path: str) -> str | None:
        with self._lock:
            if self.refused_keys is not None and self.refused_keys.search(path):
                return "slowdown"
            draw = self._random.random()
        if draw < self.slowdown_share:
            return "slowdown"
        if draw < self.slowdown_share + self.reset_share:
            return "reset"
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = request_kind(request.method, request.query)
        target = f"{request.path}?{unquote(request.query_string)}"  # a listing names its folder in the query
        area = next((name for name, pattern in self.areas.items() if pattern.search(target)), "other")
        with self._lock:
            self.counts[kind] += 1
            self.by_area[area, kind] += 1
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        body = await request.read()
        fault = self._fault(request.path)
        if fault == "slowdown":
            with self._lock:
                self.throttled += 1
            return web.Response(status=503, body=SLOWDOWN, content_type="application/xml")
        if fault == "reset":
            request.transport.close()  # the client sees its connection dropped, no answer
            return web.Response(status=500)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs, headers=headers, data=body, allow_redirects=False) as answer:
            data = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":  # no body, but the object's size in Content-Length
                response = web.StreamResponse(status=answer.status, headers=out)
                response.content_length = int(answer.headers.get("Content-Length", 0))
                await response.prepare(request)
                return response
            return web.Response(status=answer.status, body=data, headers=out)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._session = ClientSession(auto_decompress=False)
            app = web.Application(client_max_size=2**31)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    def start(self) -> S3Proxy:
        threading.Thread(target=self._serve, name="s3-proxy", daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def stop() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
