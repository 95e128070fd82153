"""worker/http.py at its edges: framing, reuse, pool accounting and shutdown, beyond tests/test_http_client.py.

Written by an outside review of the client. The first part holds the defects it found (each failed
on the client as first written, and was fixed); the second, behaviours it checked and found right
that the first tests did not cover. Same style: loopback servers that send exactly the bytes each
case needs; every case well under 2 s.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import zlib
import gzip

import pytest
import uvloop

from tests.test_http_client import AUTH, CALL, Server, answering, ok
from worker import http
from worker.errors import TransportError
from worker.providers.base import UpstreamCall

LOOPS = ["asyncio", "uvloop"]  # the worker runs on uvloop by default (OTB_EVENT_LOOP), asyncio otherwise


def run_on(loop: str, coro) -> object:  # type: ignore[no-untyped-def]
    return uvloop.run(coro) if loop == "uvloop" else asyncio.run(coro)


def once_then_close(data: bytes):  # type: ignore[no-untyped-def]
    """Answer the first request with `data`, then close the connection."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(data)
        await writer.drain()
    return handler


# ---------------------------------------------------------------------------------------------------
# Defects the review found: each failed on worker/http.py as first written.
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_a_connection_whose_close_the_loop_has_already_seen_is_not_reused(loop):
    """The server closes an idle keep-alive connection. The loop reads the FIN (eof_received: the
    transport starts closing) one iteration before it calls connection_lost, which is the only place
    `Connection.closed` is set. A call taking a connection in that window writes on a dying transport and
    fails with "closed before the answer was whole" (a TransportError: an attempt and a backoff spent),
    although the pool knew. aiohttp's pool checks `transport.is_closing()` (client_proto.is_connected)."""
    async def main() -> None:
        async with Server(once_then_close(ok())) as server, http.make_client(concurrency=2, timeout=2) as client:
            await http.send(client, server.url, CALL, AUTH)
            (conn,) = next(iter(client.idle.values()))
            while not conn.transport.is_closing():  # the FIN has been read; connection_lost is still queued
                await asyncio.sleep(0)
            assert (await http.send(client, server.url, CALL, AUTH)).json() == {"ok": True}
            assert server.connections == 2
    run_on(loop, main())


def test_closing_the_client_closes_the_connections_of_calls_still_in_flight():
    """Client.close() closes the idle connections only. A call in flight at that moment finishes and
    puts its connection back into the pool of the closed client, where nothing ever closes it: one
    leaked socket per call in flight when a chunk run ends (drain, lease lost, a crash in the run)."""
    async def main() -> None:
        async with Server(answering(ok(), delay=0.2)) as server:
            client = http.make_client(concurrency=2, timeout=2)
            task = asyncio.ensure_future(http.send(client, server.url, CALL, AUTH))
            await asyncio.sleep(0.05)
            await client.close()
            try:
                assert (await task).status == 200  # the call in flight may finish (or be cut off)...
            except TransportError:
                pass
            await asyncio.sleep(0.05)
            assert server.open_now == 0  # ...but its connection must not outlive the client
            assert not any(client.idle.values())
    run(main())


def test_a_closed_client_refuses_new_calls():
    """`Client.closed` is set and never read: a call after close() opens (or reuses a leaked) connection
    that nothing will close. aiohttp raises RuntimeError("Session is closed")."""
    async def main() -> None:
        async with Server(answering(ok())) as server:
            client = http.make_client(concurrency=2, timeout=2)
            await client.close()
            with pytest.raises((TransportError, RuntimeError)):
                await http.send(client, server.url, CALL, AUTH)
            assert server.requests == []
    run(main())


def test_a_chunked_answer_cut_short_is_an_error_whatever_the_case_of_chunked():
    """Transfer codings are case-insensitive (RFC 9112 7); llhttp frames `Chunked` as chunked, but
    on_headers_complete tests `"chunked" in value` case-sensitively, so it marks the answer as read to
    the close, and connection_lost(None) then hands the half-received body over as a whole 200."""
    cut = b'HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\n{"a":\r\n'  # then the close

    async def main() -> None:
        async with Server(once_then_close(cut)) as server:
            with pytest.raises(TransportError, match="broke"):
                await calls_once(server)
    run(main())


def test_an_empty_body_marked_gzip_keeps_the_answer_s_status():
    """An empty body with `content-encoding: gzip` (a 429/204 from some proxies and CDNs) fails
    zlib.decompress(b""), so the whole answer becomes a TransportError: its status and retry-after are
    lost. httpx's and aiohttp's decoders take an empty body as empty."""
    empty = b"HTTP/1.1 429 Too Many Requests\r\ncontent-encoding: gzip\r\nretry-after: 3\r\ncontent-length: 0\r\n\r\n"

    async def main() -> None:
        async with Server(answering(empty)) as server:
            (answer,) = await calls(server, 1)
            assert answer.status == 429 and answer.headers["retry-after"] == "3" and answer.content == b""
    run(main())


def test_a_gzip_body_of_several_members_is_decoded_whole():
    """A gzip body may hold several members (RFC 1952 2.2). zlib.decompress(..., 16 + MAX_WBITS) stops
    after the first and silently drops the rest (any bytes after the end, too): a truncated body is
    returned as a good one. aiohttp (compression_utils._decompress_members) and urllib3 decode every
    member."""
    packed = gzip.compress(b'{"text": "') + gzip.compress(b'hello"}')
    answer = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(packed), packed)

    async def main() -> None:
        async with Server(answering(answer)) as server:
            (got,) = await calls(server, 1)
            assert got.content == b'{"text": "hello"}'
    run(main())


BOMB_LIMIT = http.MAX_BODY  # far more than any provider's answer (a large embeddings batch is a few MB)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(1 << 20)
    packed = b"".join(packer.compress(zeros) for _ in range(2 * BOMB_LIMIT >> 20)) + packer.flush()
    return packed  # ~0.6 MB on the wire (level 1), 128 MiB decoded


def test_a_decompression_bomb_is_refused(bomb):
    """Neither the raw body nor the decoded one has any bound: decode_body is one zlib.decompress of
    the whole body, so ~0.6 MB of gzip become 128 MiB in the worker (and gzip -9 reaches ~1000:1: a few
    MB on the wire, gigabytes in memory, all in one blocking call on the event loop). A bounded decompressobj().decompress(data, max_length) (and a cap on the raw body) would stop it."""
    answer = b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(bomb), bomb)

    async def main() -> None:
        async with Server(answering(answer)) as server:
            try:
                (got,) = await calls(server, 1)
            except TransportError:
                return
            size = len(got.content)
            del got
            assert size <= BOMB_LIMIT, f"a {len(bomb)}-byte gzip body was decoded to {size} bytes"
    run(main())


def test_an_answer_without_a_body_by_its_status_leaves_the_connection_reusable():
    """A 204 (like a 304) has no body whatever its headers (RFC 9112 6.3); llhttp completes it at the
    end of its head and says keep-alive, but `to_close` (no length, not chunked) closes the connection
    anyway. h11 frames 204/304 as length 0 and keeps the connection. (Minor: costs a handshake.)"""
    async def main() -> None:
        async with Server(answering(b"HTTP/1.1 204 No Content\r\n\r\n")) as server:
            answers = await calls(server, 2)
            assert [a.status for a in answers] == [204, 204] and server.connections == 1
    run(main())


def test_a_caller_s_user_agent_or_accept_encoding_is_sent_once():
    """request_head promises "one of each name (the last given wins)", but user-agent and accept-encoding
    are written first and are not in FIXED, so a caller's own are sent again: two User-Agent lines
    (not a list field: RFC 9110 5.3 forbids repeating it), and `accept-encoding: identity` does not stop
    gzip, since the server also sees ours."""
    async def main() -> None:
        async with Server(answering(ok())) as server, http.make_client(concurrency=2, timeout=2) as client:
            await http.send(client, server.url, CALL, {**AUTH, "User-Agent": "mine/1", "Accept-Encoding": "identity"})
            head = server.requests[0].partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
            names = [line.split(b":")[0] for line in head[1:]]
            assert names.count(b"user-agent") == 1 and names.count(b"accept-encoding") == 1
    run(main())


def test_a_malformed_base_url_is_a_transport_error_not_a_stray_exception():
    """Origin.of maps a bad scheme and a bad port, but urlsplit's ValueError (an unclosed IPv6 bracket)
    and the idna codec's UnicodeError (a label over 63 characters) escape http.send as they are, outside
    the error tree the worker maps (minor: a settings mistake, but every request then dies oddly)."""
    async def main() -> None:
        async with http.make_client(concurrency=2, timeout=2) as client:
            for url in ("http://[::1", "https://\u00fc" + "a" * 70 + ".example"):
                with pytest.raises(TransportError):
                    await http.send(client, url, CALL, AUTH)
    run(main())


def test_a_101_answer_is_a_transport_error_without_a_fatal_error_logged(caplog):
    """httptools raises HttpParserUpgrade for a 101, which is not an HttpParserError: it escapes
    data_received, and asyncio logs "Fatal error: protocol.data_received() call failed" with a traceback
    before connection_lost maps it (minor: the result is right, the log is noise at error level)."""
    async def main() -> None:
        async with Server(answering(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: h2c\r\nconnection: upgrade\r\n\r\n")) as server:
            with pytest.raises(TransportError):
                await calls(server, 1)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        run(main())
    assert not [r for r in caplog.records if "Fatal error" in r.getMessage()]


# ---------------------------------------------------------------------------------------------------
# Checked and right (not covered by tests/test_http_client.py).
# ---------------------------------------------------------------------------------------------------

def test_a_slot_handed_to_a_waiter_cancelled_at_that_moment_is_passed_on():
    async def main() -> None:
        async with Server(answering(ok(), delay=0.05)) as server, http.make_client(concurrency=1, timeout=2) as client:
            first = asyncio.ensure_future(http.send(client, server.url, CALL, AUTH))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(http.send(client, server.url, CALL, AUTH))
            await asyncio.sleep(0.01)
            assert len(client.waiters) == 1
            release = client._release

            def release_then_cancel() -> None:  # the slot goes to `second`, which is cancelled before it runs
                assert client.waiters and client.in_use == 1
                release()
                client._release = release  # type: ignore[method-assign]
                second.cancel()
            client._release = release_then_cancel  # type: ignore[method-assign]
            assert (await first).status == 200
            with pytest.raises(asyncio.CancelledError):
                await second
            assert client.in_use == 0 and not client.waiters
            assert (await http.send(client, server.url, CALL, AUTH)).status == 200
            assert client.in_use == 0
    run(main())


def test_a_waiter_cancelled_while_waiting_never_takes_a_slot():
    async def main() -> None:
        async with Server(answering(ok(), delay=0.1)) as server, http.make_client(concurrency=1, timeout=2) as client:
            first = asyncio.ensure_future(http.send(client, server.url, CALL, AUTH))
            await asyncio.sleep(0.01)
            waiting = [asyncio.ensure_future(http.send(client, server.url, CALL, AUTH)) for _ in range(3)]
            await asyncio.sleep(0.01)
            waiting[1].cancel()
            results = await asyncio.gather(first, *waiting, return_exceptions=True)
            assert isinstance(results[2], asyncio.CancelledError)
            assert [r.status for i, r in enumerate(results) if i != 2] == [200] * 3
            assert client.in_use == 0 and not client.waiters and server.connections == 1
    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_an_early_answer_then_a_close_while_the_body_is_still_being_written_is_the_answer(loop):
    """A 413 sent after the head only, then a close with the body unread (an RST): the answer wins."""
    big = UpstreamCall("POST", "/v1/messages", {"text": "x" * 4_000_000})

    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
        await writer.drain()

    async def main() -> None:
        async with Server(early) as server, http.make_client(concurrency=2, timeout=2) as client:
            assert (await http.send(client, server.url, big, AUTH)).status == 413
            assert client.in_use == 0 and not any(client.idle.values())
    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_multi_megabyte_bodies_both_ways_and_a_slow_reader(loop):
    body = "y" * 6_000_000
    big = UpstreamCall("POST", "/v1/messages", {"text": body})
    answer_body = b'{"text": "' + b"z" * 6_000_000 + b'"}'

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(v for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
                          if k.lower() == b"content-length"))
        got = 0
        while got < length:  # read in small bites: the client's write buffer fills and drains
            got += len(await reader.read(65536))
            await asyncio.sleep(0)
        writer.write(ok(answer_body))
        await writer.drain()

    async def main() -> None:
        async with Server(slow) as server, http.make_client(concurrency=2, timeout=2) as client:
            answer = await http.send(client, server.url, big, AUTH)
            assert answer.content == answer_body
    run_on(loop, main())


@pytest.mark.parametrize("what", ["a server that never reads a 16 MB body", "a TLS handshake that never ends"])
def test_a_call_stuck_before_its_answer_is_cut_off_at_its_deadline(what):
    big = UpstreamCall("POST", "/v1/messages", {"text": "x" * 16_000_000})
    tls = what.startswith("a TLS")

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await asyncio.sleep(3)

    async def main() -> None:
        async with Server(mute) as server, http.make_client(concurrency=2, timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(TransportError) as caught:
                await http.send(client, server.url.replace("http://", "https://") if tls else server.url,
                                CALL if tls else big, AUTH)
            assert caught.value.code == "upstream_timeout" and time.monotonic() - started < 1.0
            assert client.in_use == 0
    run(main())


def test_bytes_sent_on_an_idle_connection_retire_it():
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            writer.write(ok())
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{\"x\": 1}\n")  # nobody asked
            await writer.drain()

    async def main() -> None:
        async with Server(chatty) as server, http.make_client(concurrency=2, timeout=2) as client:
            assert (await http.send(client, server.url, CALL, AUTH)).json() == {"ok": True}
            await asyncio.sleep(0.1)
            assert (await http.send(client, server.url, CALL, AUTH)).json() == {"ok": True}
            assert server.connections == 2
    run(main())


def test_an_answer_fed_a_byte_at_a_time_with_trailers_is_whole_and_the_connection_reused():
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/json\r\n\r\n"
               b"3\r\n{\"a\r\n5\r\n\": 1}\r\n0\r\nx-trailer: t\r\n\r\n")

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            for i in range(len(chunked)):
                writer.write(chunked[i:i + 1])
                await writer.drain()
                if i % 16 == 0:
                    await asyncio.sleep(0.001)

    async def main() -> None:
        async with Server(trickle) as server:
            answers = await calls(server, 2)
            assert [a.json() for a in answers] == [{"a": 1}] * 2 and server.connections == 1
    run(main())


def test_http_1_0_answers_are_read_to_the_close_or_by_length_and_never_reused():
    async def main() -> None:
        async with Server(once_then_close(b"HTTP/1.0 200 OK\r\n\r\n{\"a\": 1}")) as server:
            answers = await calls(server, 2)
            assert [a.json() for a in answers] == [{"a": 1}] * 2 and server.connections == 2
        async with Server(answering(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}")) as server:
            answers = await calls(server, 2)
            assert [a.json() for a in answers] == [{}] * 2 and server.connections == 2
    run(main())


def test_a_length_and_chunked_together_are_refused_and_the_connection_dropped():
    both = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"

    async def main() -> None:
        async with Server(answering(both, ok())) as server, http.make_client(concurrency=2, timeout=2) as client:
            with pytest.raises(TransportError, match="not valid HTTP"):
                await http.send(client, server.url, CALL, AUTH)
            assert client.in_use == 0 and not any(client.idle.values())
    run(main())


def test_interim_answers_with_headers_do_not_leak_into_the_final_one():
    answer = b"HTTP/1.1 103 Early Hints\r\nlink: </x>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + ok()

    async def main() -> None:
        async with Server(answering(answer)) as server:
            answers = await calls(server, 2)
            assert all(a.status == 200 and "link" not in a.headers for a in answers) and server.connections == 1
    run(main())


def test_the_host_header_of_ipv6_and_idna_hosts():
    assert http.Origin.of("https://[2001:db8::1]/v1").host_header == "[2001:db8::1]"
    assert http.Origin.of("https://[2001:db8::1]:8443").host == "2001:db8::1"
    assert http.Origin.of("https://B\u00fccher.example:443/").host_header == "xn--bcher-kva.example"
    assert http.Origin.of("http://Example.COM:8080").host_header == "example.com:8080"


def test_a_call_to_an_ipv6_loopback_literal():
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")

    async def main() -> None:
        seen: list[bytes] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(await reader.readuntil(b"\r\n\r\n"))
            writer.write(ok())
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(serve, "::1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with http.make_client(concurrency=2, timeout=2) as client:
                assert (await http.send(client, f"http://[::1]:{port}", CALL, AUTH)).status == 200
            assert f"host: [::1]:{port}\r\n".encode() in seen[0]
        finally:
            server.close()
    run(main())


# helpers ---------------------------------------------------------------------------------------------

def run(coro) -> object:  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def calls(server: Server, n: int) -> list[http.Answer]:
    async with http.make_client(concurrency=2, timeout=2) as client:
        return [await http.send(client, server.url, CALL, AUTH) for _ in range(n)]


async def calls_once(server: Server) -> http.Answer:
    (answer,) = await calls(server, 1)
    return answer


def test_a_free_slot_is_taken_at_once_after_waiters_gave_up():
    """Waiters that timed out leave the line: a later call with slots free does not queue behind them
    (it would have waited for a release that no call in flight was left to make, up to its deadline)."""
    async def main() -> None:
        async with Server(answering(ok(), delay=0.3)) as server, http.make_client(concurrency=1, timeout=5) as client:
            first = asyncio.ensure_future(http.send(client, server.url, CALL, AUTH))
            await asyncio.sleep(0.05)
            short = UpstreamCall("POST", "/v1/messages", {"m": 1}, timeout=0.1)
            with pytest.raises(TransportError):
                await http.send(client, server.url, short, AUTH)  # gives up waiting for the one slot
            await first
            assert client.in_use == 0 and not client.waiters
            started = time.monotonic()
            assert (await http.send(client, server.url, CALL, AUTH)).status == 200
            assert time.monotonic() - started < 1.0
    run(main())


def test_a_host_is_looked_up_once_for_the_connections_opened_together_and_again_after_its_ttl(monkeypatch):
    """A run's start opens `concurrency` connections at once: one DNS lookup serves them (aiohttp
    cached lookups for 10 s too); after DNS_TTL the next new connection looks the host up again."""
    async def main() -> None:
        loop = asyncio.get_running_loop()
        looked_up: list[str] = []
        real = loop.getaddrinfo

        async def counting(host, *args, **kwargs):  # type: ignore[no-untyped-def]
            looked_up.append(host)
            await asyncio.sleep(0.05)  # a resolver takes a while: the calls meet on one lookup
            return await real(host, *args, **kwargs)

        monkeypatch.setattr(loop, "getaddrinfo", counting)
        async with Server(answering(ok(), delay=0.05)) as server, http.make_client(concurrency=16, timeout=5) as client:
            url = server.url.replace("127.0.0.1", "localhost")
            answers = await asyncio.gather(*(http.send(client, url, CALL, AUTH) for _ in range(8)))
            assert [a.status for a in answers] == [200] * 8 and looked_up == ["localhost"]
            assert server.connections == 8 and server.requests[0].split(b"\r\n")[1] == b"host: " + url.split("//")[1].encode()
            monkeypatch.setattr(http, "DNS_TTL", 0.0)
            client.addresses = {h: (0.0, a) for h, (_, a) in client.addresses.items()}  # expired
            await asyncio.gather(*(http.send(client, url, CALL, AUTH) for _ in range(9)))  # one more connection
            assert looked_up == ["localhost", "localhost"]
    run(main())


def test_a_host_that_does_not_resolve_is_a_transport_error_and_is_not_cached(monkeypatch):
    async def main() -> None:
        loop = asyncio.get_running_loop()
        calls = 0

        async def failing(host, *args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            raise socket.gaierror(-2, "Name or service not known")

        monkeypatch.setattr(loop, "getaddrinfo", failing)
        async with http.make_client(concurrency=2, timeout=5) as client:
            for _ in range(2):
                with pytest.raises(TransportError, match="failed: gaierror"):
                    await http.send(client, "https://api.example.invalid", CALL, AUTH)
            assert calls == 2 and client.addresses == {} and client.lookups == {}
    run(main())
