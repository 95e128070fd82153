"""The one place HTTP is sent: keep-alive HTTP/1.1 connections, pooled per chunk run; errors mapped once.

Why not a general client. A call to a provider is one POST of JSON and one JSON answer, on a few
origins, and at the defaults the worker's whole budget is 0.4 ms of CPU per request. aiohttp's
ClientSession costs 0.20-0.24 ms a call on uvloop (a request object, a response object, a URL
object, multidicts, tracing hooks, a timer context), httpx over aiohttp 2-3x that, and httpx's
own async transport collapses past a few dozen calls in flight (reference/performance.md). This
module keeps what those calls need and nothing else: `httptools` (llhttp, the parser uvicorn runs
on) reads the answers; asyncio's transports carry them, TLS included; one connection serves one call
at a time and goes back to its origin's pool. 0.08-0.10 ms a call (bench/README.md).

What it does, as a careful client must: `Content-Length` and chunked answers, and answers read to
the close; gzip and deflate bodies; `Connection: close` honoured; a connection idle past
`KEEP_IDLE` seconds, or closed by the server while idle, is never reused; a host is looked up once
per `DNS_TTL` for every connection opened meanwhile (as aiohttp caches it); one deadline per call
covering the wait for a free connection, connecting (10 s at most) and the answer; a call cut off
(timeout, cancel, a broken answer) closes its connection, so no later call reads its leftovers. No
cookies, redirects or proxies: a provider answers its API's POSTs without redirects or cookies, and
proxies were never taken from the environment (aiohttp's session, used before, was built without
`trust_env`); a 3xx is an answer like any other, and the provider's adapter reports it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import json
import socket
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from .errors import InvalidRequest, ProtocolError, TransportError
from .providers.base import UpstreamCall

MAX_BODY = 64 << 20  # bytes an answer may have, on the wire and decoded: no provider answer comes near it
DNS_TTL = 10.0  # seconds a host's looked-up addresses are used for new connections (aiohttp's default)
KEEP_IDLE = 15.0  # seconds an idle connection may be reused after (aiohttp's default keep-alive)
CONNECT_TIMEOUT = 10.0
USER_AGENT = "opentoken-batch"


class Headers(dict[str, str]):
    """An answer's headers, names lowercased; looked up in any case. A repeated header's values are
    joined with ", " (RFC 9110 5.3)."""

    def get(self, name: str, default: Any = None) -> Any:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


@dataclass
class Answer:
    status: int
    headers: Mapping[str, str]  # case-insensitive
    content: bytes

    def json(self) -> Any:
        """The decoded body: orjson (a sixth of json's time, on every answer), json for what orjson
        refuses and json reads (NaN, UTF-16) and for long digit runs (orjson reads an integer past
        64 bits as an inexact float), else ProtocolError."""
        if LONG_DIGITS not in self.content.translate(DIGITS_AS_ZERO):  # C speed; a regex took 7x as long
            try:
                return orjson.loads(self.content)
            except orjson.JSONDecodeError:
                pass
        try:
            return json.loads(self.content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                f"provider answered {self.status} with a body that is not valid JSON ({len(self.content)} bytes)"
            ) from exc


DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
LONG_DIGITS = b"0" * 19  # 19 digits in a row: possibly an integer past 64 bits


class Broken(Exception):
    """The connection failed before its answer was whole: closed, reset, or an answer we cannot parse."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; one call at a time. The parser's callbacks build the answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Answer] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.headers = Headers()
        self.body: list[bytes] = []
        self.to_close = False  # an answer that ends when the connection does (no length, not chunked)
        self.size = 0  # the answer's body so far, bytes
        self.closed = False
        self.idle_since = 0.0

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.close()  # bytes nobody asked for (a late answer to a call cut off): never reuse
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:  # a 101: no provider switches protocols on a POST
            self._fail(Broken("the server switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(Broken(f"the answer is not valid HTTP ({exc})"))

    def eof_received(self) -> None:
        """The server closed its side. Seen a loop turn before connection_lost: no call may take the
        connection from the pool in between (aiohttp checks the same before reuse)."""
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            if self.to_close and exc is None:
                self.on_message_complete()  # the close is the end of this answer
            else:
                self._fail(Broken("closed before the answer was whole" if exc is None else type(exc).__name__))

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self.waiter is not None and self.waiter.done():
            self.close()  # a second answer to one call: this connection's framing cannot be trusted

    def on_header(self, name: bytes, value: bytes) -> None:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        before = dict.get(self.headers, key)  # dict's own lookups: the name is lowercase already
        self.headers[key] = text if before is None else f"{before}, {text}"

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 1xx: an interim answer; the real one follows
            self.headers = Headers()
            return
        self.to_close = status not in (204, 304) and not dict.__contains__(self.headers, "content-length") \
            and "chunked" not in dict.get(self.headers, "transfer-encoding", "").lower()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            self._fail(Broken(f"the answer is larger than {MAX_BODY >> 20} MiB"))
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200 or self.waiter is None or self.waiter.done():
            return
        content = b"".join(self.body)
        coding = dict.get(self.headers, "content-encoding", "identity").lower()
        if coding != "identity":
            try:
                content = decode_body(content, coding)
            except (zlib.error, ValueError) as exc:  # corrupt, cut short, past MAX_BODY, or not asked for
                self._fail(Broken(f"the answer's {coding} body cannot be decoded ({exc})"))
                return
        if self.to_close or not self.parser.should_keep_alive():
            self.close()
        self.waiter.set_result(Answer(status, self.headers, content))
        self.headers, self.body = Headers(), []  # the answer's own: nothing parsed later may touch them

    # our side
    def send(self, data: bytes, deadline: float) -> asyncio.Future[Answer]:
        self.headers, self.body, self.to_close, self.size = Headers(), [], False, 0
        self.waiter = waiter = self.loop.create_future()
        self.timer = self.loop.call_at(deadline, self._timed_out)
        assert self.transport is not None
        self.transport.write(data)
        return waiter

    def done(self) -> None:
        """The call is over (answered or not): stop its timer."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self) -> None:
        self.timer = None
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(TimeoutError())
        self.close()

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _time_up(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def decode_body(content: bytes, coding: str) -> bytes:
    """A gzip or deflate body decoded whole (every gzip member, RFC 1952 2.2), never past MAX_BODY;
    ValueError for one cut short or too large, zlib.error for one corrupt."""
    if not content:
        return content  # an empty body "in gzip" (a 204, a bare 429) is empty
    if coding in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif coding == "deflate":
        wbits = zlib.MAX_WBITS if content[0] & 0x0F == 8 and int.from_bytes(content[:2], "big") % 31 == 0 \
            else -zlib.MAX_WBITS  # zlib-wrapped as RFC 9110 says, or raw deflate as some servers send it
    else:
        raise ValueError(f"{coding} was not asked for")
    out: list[bytes] = []
    size, rest = 0, content
    while rest:
        stream = zlib.decompressobj(wbits)
        part = stream.decompress(rest, MAX_BODY + 1 - size)
        size += len(part)
        if size > MAX_BODY:
            raise ValueError(f"larger than {MAX_BODY >> 20} MiB decoded")
        if not stream.eof:
            raise ValueError("cut short")
        out.append(part)
        rest = stream.unused_data if wbits > 16 else b""  # another gzip member follows
    return b"".join(out)


@dataclass(frozen=True)
class Origin:
    """Where a base URL's calls go, and what every request line and head to it starts with."""

    host: str
    port: int
    tls: bool
    prefix: str  # the base URL's own path, put before each call's path
    host_header: str

    @classmethod
    def of(cls, base_url: str) -> Origin:
        try:
            return cls._of(base_url)
        except (ValueError, UnicodeError):  # urlsplit's unbalanced brackets, a host IDNA cannot encode
            raise TransportError(f"cannot call {base_url}: not a valid URL") from None

    @classmethod
    def _of(cls, base_url: str) -> Origin:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TransportError(f"cannot call {base_url}: not an http(s) URL")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        host = parts.hostname
        name = host if host.isascii() else host.encode("idna").decode("ascii")
        netloc = f"[{name}]" if ":" in name else name
        if port != (443 if tls else 80):
            netloc = f"{netloc}:{port}"
        return cls(host, port, tls, parts.path.rstrip("/"), netloc)


_tls_context: ssl.SSLContext | None = None


def tls_context() -> ssl.SSLContext:
    """The system's trusted CAs, hostname checked (made once: loading the CAs takes ~10 ms)."""
    global _tls_context
    if _tls_context is None:
        _tls_context = ssl.create_default_context()
    return _tls_context


class Client:
    """Keep-alive connections per origin; at most `concurrency` calls use one at a time (idle ones do
    not count, as with aiohttp's connector limit). `timeout`: seconds per call, all included."""

    def __init__(self, *, concurrency: int, timeout: float) -> None:
        self.limit, self.timeout = concurrency, timeout
        self.in_use = 0
        self.idle: dict[Origin, collections.deque[Connection]] = {}
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.origins: dict[str, Origin] = {}
        self.addresses: dict[str, tuple[float, list[str]]] = {}  # host -> (good until, its addresses)
        self.lookups: dict[str, asyncio.Task[list[str]]] = {}  # host -> the lookup under way
        self.closed = False

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.closed = True
        for pool in self.idle.values():
            for conn in pool:
                conn.close()
        self.idle.clear()

    def origin(self, base_url: str) -> Origin:
        found = self.origins.get(base_url)
        if found is None:
            found = self.origins[base_url] = Origin.of(base_url)
        return found

    async def request(self, method: str, base_url: str, path: str, body: bytes, headers: Mapping[str, str],
                      timeout: float | None = None) -> Answer:
        """One call; `Broken`, `TimeoutError` or `OSError` when there is no whole answer."""
        if self.closed:
            raise RuntimeError("the HTTP client is closed")  # our own mistake: a run closes it after its calls
        loop = asyncio.get_running_loop()
        origin = self.origin(base_url)
        deadline = loop.time() + (timeout or self.timeout)
        head = request_head(method, origin, path, len(body), headers)
        await self._slot(loop, deadline)
        try:
            conn = await self._connection(loop, origin, deadline)
            try:
                answer = await conn.send(head + body, deadline)
            except BaseException:
                conn.close()  # cut off mid-call: what the server still sends must not reach another call
                raise
            finally:
                conn.done()
            if self.closed:
                conn.close()  # the run is over: no pool keeps it
            elif not conn.closed:
                conn.idle_since = loop.time()
                self.idle.setdefault(origin, collections.deque()).append(conn)
            return answer
        finally:
            self._release()

    async def _slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Count this call in; wait, in order, while `limit` calls are in. (A waiter is only ever
        behind a full count: _release hands its slot to the first waiter rather than freeing it.)"""
        if self.in_use < self.limit:
            self.in_use += 1
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self.waiters.append(waiter)
        timer = loop.call_at(deadline, _time_up, waiter)
        try:
            await waiter  # _release hands its slot over: in_use already counts this call
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._release()  # the slot came as the wait ended otherwise: pass it on
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)  # gone from the line: none pile up behind a free slot
            raise
        finally:
            timer.cancel()

    def _release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on
                return
        self.in_use -= 1

    async def _connection(self, loop: asyncio.AbstractEventLoop, origin: Origin, deadline: float) -> Connection:
        """A live idle connection to `origin` (most recent first), else a new one."""
        pool = self.idle.get(origin)
        now = loop.time()
        while pool:
            conn = pool.pop()
            if not conn.closed and now - conn.idle_since < KEEP_IDLE and not (
                    conn.transport is not None and conn.transport.is_closing()):
                return conn
            conn.close()
        budget = max(0.0, min(CONNECT_TIMEOUT, deadline - now))
        return await asyncio.wait_for(self._connect(loop, origin), budget)

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> Connection:
        """A new connection: to each address of the host in turn until one answers (TLS names the host)."""
        failure: OSError | None = None
        for address in await self._addresses(loop, origin):
            try:
                _, conn = await loop.create_connection(
                    lambda: Connection(loop), address, origin.port, ssl=tls_context() if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None)
                return conn
            except OSError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def _addresses(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> list[str]:
        """The host's addresses, looked up once per DNS_TTL seconds and shared by the connections opened
        meanwhile (a run's start opens `concurrency` of them at once: one lookup, not hundreds)."""
        if _is_address(origin.host):
            return [origin.host]
        found = self.addresses.get(origin.host)
        if found is not None and loop.time() < found[0]:
            return found[1]
        lookup = self.lookups.get(origin.host)
        if lookup is None:
            lookup = self.lookups[origin.host] = loop.create_task(self._look_up(loop, origin))
            lookup.add_done_callback(lambda done: self._looked_up(origin.host, done))
        return await asyncio.shield(lookup)  # one caller's deadline does not cancel the others' lookup

    def _looked_up(self, host: str, done: asyncio.Task[list[str]]) -> None:
        self.lookups.pop(host, None)
        if not done.cancelled():
            done.exception()  # seen here: a failure whose callers all gave up is not logged as unretrieved

    async def _look_up(self, loop: asyncio.AbstractEventLoop, origin: Origin) -> list[str]:
        infos = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))  # in the resolver's order, once each
        self.addresses[origin.host] = (loop.time() + DNS_TTL, addresses)
        return addresses


def request_head(method: str, origin: Origin, path: str, length: int, headers: Mapping[str, str]) -> bytes:
    """The request line and headers, one of each name (the last given wins, in any case). A path,
    name or value holding CR, LF or (a path) a space is refused: whatever a key or a path holds, it
    cannot end the head early and add a header or a request of its own."""
    named = {**DEFAULT_HEADERS, **{name.lower(): value for name, value in headers.items()}}
    for text in (path, *named, *named.values()):
        if "\r" in text or "\n" in text or "\0" in text:
            raise InvalidRequest("the request cannot be sent: a header or its path holds a line break or a NUL")
    if " " in path:
        raise InvalidRequest("the request cannot be sent: its path holds a space")
    lines = [f"{method} {origin.prefix}{path} HTTP/1.1", f"host: {origin.host_header}", f"content-length: {length}"]
    lines.extend(f"{name}: {value}" for name, value in named.items() if name not in FIXED)
    lines.append("\r\n")
    return "\r\n".join(lines).encode("utf-8")


DEFAULT_HEADERS = {"user-agent": USER_AGENT, "accept-encoding": "gzip, deflate"}  # a caller's own replace these
FIXED = frozenset({"host", "content-length", "transfer-encoding", "connection"})  # ours to set, never a caller's


def make_client(*, concurrency: int, timeout: float) -> Client:
    """A pooled client: `concurrency` calls at once at most; `timeout` seconds per call, connecting
    (and waiting for a free connection) within 10 of them. Use it inside the event loop it serves."""
    return Client(concurrency=concurrency, timeout=timeout)


async def send(client: Client, base_url: str, call: UpstreamCall, auth: dict[str, str]) -> Answer:
    """POST one call; TransportError for anything that is not an HTTP answer.

    The body is encoded here, before anything is sent, so that our own encoder failing (a number too
    large for JSON, a body nested too deeply) ends the request as invalid instead of being retried and
    reported as the network failing.
    """
    content = encode(call.json)
    try:
        return await client.request(call.method, base_url, call.path, content,
                                    {**JSON_TYPE, **call.headers, **auth}, call.timeout)
    except (asyncio.TimeoutError, TimeoutError) as exc:  # the call's own time ran out
        raise TransportError(f"timed out calling {base_url}{_path_only(call.path)}", code="upstream_timeout") from exc
    except OSError as exc:  # refused, reset, unreachable, TLS refused
        raise TransportError(f"connection to {base_url} failed: {type(exc).__name__}") from exc
    except Broken as exc:  # the answer broke off or cannot be read
        raise TransportError(f"connection to {base_url} broke: {exc}") from exc


JSON_TYPE = {"content-type": "application/json"}


def encode(body: Any) -> bytes:
    """The JSON bytes of a call (compact, UTF-8); InvalidRequest if impossible.

    orjson first (a tenth of json's time, on every call): it writes NaN and Infinity as null where
    json refuses them, so its bytes are taken only when they hold no null at all; anything else
    (a null, an integer past 64 bits, a lone surrogate, deep nesting) goes through json as before.
    """
    try:
        fast = orjson.dumps(body)
    except TypeError:
        fast = b"null"
    if b"null" not in fast:
        return fast
    try:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except RecursionError:
        raise InvalidRequest("the request cannot be sent: it is nested too deeply to encode as JSON") from None
    except (ValueError, TypeError) as exc:  # NaN/Infinity (1e400 read as a float), or a value JSON has no form for
        raise InvalidRequest(f"the request cannot be sent as JSON: {exc}") from None


def _path_only(path: str) -> str:
    return path.split("?", 1)[0]
