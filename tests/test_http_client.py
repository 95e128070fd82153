"""worker/http.py against real sockets: servers on loopback that send exactly the bytes each case needs.

The client is ours (a keep-alive pool over httptools), so the framing cases a general client handles
for us are checked here: lengths, chunks, reads to the close, gzip, interim answers, keep-alive and
`Connection: close`, a close mid-answer, timeouts (and no late answer reaching the next call), the
pool's limit, TLS with verification, and headers that could smuggle a line.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from worker import http
from worker.errors import InvalidRequest, TransportError
from worker.providers.base import UpstreamCall

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Server"], Awaitable[None]]


class Server:
    """A loopback server running `handler` per connection; counts connections and requests."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler, self.tls = handler, tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self.open_now -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request (head and body); None at the end of the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answering(*answers: bytes, delay: float = 0.0) -> Handler:
    """Answer each request on a connection with the next of `answers` (the last one repeats)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        i = 0
        while await server.read_request(reader) is not None:
            await asyncio.sleep(delay)
            writer.write(answers[min(i, len(answers) - 1)])
            await writer.drain()
            i += 1
    return handler


def ok(body: bytes = b'{"ok": true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


CALL = UpstreamCall("POST", "/v1/messages", {"model": "m", "max_tokens": 8})
AUTH = {"x-api-key": "k"}


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def calls(server: Server, n: int, *, concurrency: int = 4, timeout: float = 5.0,
                call: UpstreamCall = CALL) -> list[http.Answer]:
    return await calls_to(server.url, n, concurrency=concurrency, timeout=timeout, call=call)


async def calls_to(url: str, n: int, *, concurrency: int = 4, timeout: float = 5.0,
                   call: UpstreamCall = CALL) -> list[http.Answer]:
    async with http.make_client(concurrency=concurrency, timeout=timeout) as client:
        return [await http.send(client, url, call, AUTH) for _ in range(n)]


def test_one_connection_serves_call_after_call_and_the_request_is_well_formed():
    async def main() -> None:
        async with Server(answering(ok())) as server:
            answers = await calls(server, 3)
            assert [a.status for a in answers] == [200] * 3 and answers[0].json() == {"ok": True}
            assert server.connections == 1
            head, _, body = server.requests[0].partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            assert lines[0] == b"POST /v1/messages HTTP/1.1"
            names = [line.split(b":")[0] for line in lines[1:]]
            assert len(names) == len(set(names))  # one content-type, though the call and the default both name it
            assert b"x-api-key: k" in lines and b"content-type: application/json" in lines
            assert b"host: " + server.url.split("//")[1].encode() in lines
            assert body == b'{"model":"m","max_tokens":8}'
    run(main())


def test_headers_are_looked_up_in_any_case_and_repeats_are_joined():
    async def main() -> None:
        async with Server(answering(ok(extra=b"Request-Id: req_1\r\nX-Thing: a\r\nx-thing: b\r\n"))) as server:
            (answer,) = await calls(server, 1)
            assert answer.headers["request-id"] == answer.headers.get("REQUEST-ID") == "req_1"
            assert "Request-Id" in answer.headers and answer.headers.get("x-thing") == "a, b"
    run(main())


def test_chunked_gzip_and_read_to_the_close_answers_come_whole():
    body = b'{"text": "' + b"x" * 5000 + b'"}'
    packed = gzip.compress(body)
    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-encoding: gzip\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(packed[i:i + 700]), packed[i:i + 700]) for i in range(0, len(packed), 700)) + b"0\r\n\r\n"
    to_close = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n" + body

    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(to_close)
        await writer.drain()  # then the handler returns and the connection closes: the end of the body

    async def main() -> None:
        async with Server(answering(chunked)) as server:
            answers = await calls(server, 2)
            assert [a.content for a in answers] == [body, body] and server.connections == 1
        async with Server(close_after) as server:
            answers = await calls(server, 2)
            assert [a.content for a in answers] == [body, body] and server.connections == 2  # never reused
    run(main())


def test_an_interim_answer_is_skipped_and_connection_close_is_honoured():
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ok(extra=b"connection: close\r\n")

    async def main() -> None:
        async with Server(answering(answer)) as server:
            answers = await calls(server, 2)
            assert [a.status for a in answers] == [200, 200] and answers[1].json() == {"ok": True}
            assert server.connections == 2
    run(main())


@pytest.mark.parametrize("cut", ["close", "reset"])
def test_an_answer_cut_off_is_a_transport_error_and_the_next_call_gets_a_new_connection(cut):
    """The server closes (FIN) or resets (RST: connection_lost with ConnectionResetError) mid-answer."""
    async def cut_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        if server.connections == 1:
            answer = ok() if cut == "close" else ok(b'{"a": "' + b"x" * 1000 + b'"}')
            writer.write(answer[:-5] if cut == "close" else answer[:-300])
            await writer.drain()
            if cut == "reset":
                await asyncio.sleep(0.05)
                writer.transport.abort()
            return
        writer.write(ok())
        await writer.drain()

    async def main() -> None:
        async with Server(cut_first) as server, http.make_client(concurrency=2, timeout=2) as client:
            with pytest.raises(TransportError, match="broke"):
                await http.send(client, server.url, CALL, AUTH)
            assert client.in_use == 0
            assert (await http.send(client, server.url, CALL, AUTH)).json() == {"ok": True}
            assert server.connections == 2
    run(main())


def test_garbage_and_an_encoding_not_asked_for_are_transport_errors():
    async def main() -> None:
        async with Server(answering(b"SMTP ready\r\n\r\n")) as server:
            with pytest.raises(TransportError, match="not valid HTTP"):
                await calls(server, 1)
        async with Server(answering(ok(extra=b"content-encoding: br\r\n"))) as server:
            with pytest.raises(TransportError, match="br"):
                await calls(server, 1)
    run(main())


def test_a_timeout_closes_the_connection_so_its_late_answer_reaches_no_later_call():
    async def slow_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        while await server.read_request(reader) is not None:
            if len(server.requests) == 1:
                await asyncio.sleep(0.5)
                writer.write(ok(b'{"late": true}'))
            else:
                writer.write(ok(b'{"second": true}'))
            await writer.drain()

    async def main() -> None:
        async with Server(slow_first) as server, http.make_client(concurrency=2, timeout=0.2) as client:
            with pytest.raises(TransportError) as caught:
                await http.send(client, server.url, CALL, AUTH)
            assert caught.value.code == "upstream_timeout"
            assert (await http.send(client, server.url, CALL, AUTH)).json() == {"second": True}
            assert server.connections == 2
            call = UpstreamCall("POST", "/v1/messages", {"m": 1}, timeout=2.0)  # a call's own, longer time
            assert (await http.send(client, server.url, call, AUTH)).status == 200
    run(main())


def test_a_cancelled_call_closes_its_connection():
    async def main() -> None:
        async with Server(answering(ok(), delay=0.3)) as server, http.make_client(concurrency=2, timeout=5) as client:
            task = asyncio.ensure_future(http.send(client, server.url, CALL, AUTH))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await http.send(client, server.url, CALL, AUTH)).json() == {"ok": True}
            assert server.connections == 2 and client.in_use == 0
    run(main())


def test_no_more_calls_at_once_than_the_limit_and_every_call_answered():
    async def main() -> None:
        async with Server(answering(ok(), delay=0.05)) as server, http.make_client(concurrency=3, timeout=5) as client:
            answers = await asyncio.gather(*(http.send(client, server.url, CALL, AUTH) for _ in range(20)))
            assert [a.status for a in answers] == [200] * 20
            assert server.most_open <= 3 and server.connections == 3 and client.in_use == 0
    run(main())


def test_waiting_for_a_free_connection_counts_against_the_call_s_time():
    async def main() -> None:
        async with Server(answering(ok(), delay=0.4)) as server, http.make_client(concurrency=1, timeout=0.3) as client:
            results = await asyncio.gather(*(http.send(client, server.url, CALL, AUTH) for _ in range(2)),
                                           return_exceptions=True)
            assert all(isinstance(r, TransportError) and r.code == "upstream_timeout" for r in results)
            assert client.in_use == 0 and not client.waiters
    run(main())


def test_a_connection_the_server_closed_while_idle_is_not_reused():
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, server: Server) -> None:
        await server.read_request(reader)
        writer.write(ok())
        await writer.drain()

    async def main() -> None:
        async with Server(one_then_close) as server, http.make_client(concurrency=2, timeout=5) as client:
            await http.send(client, server.url, CALL, AUTH)
            await asyncio.sleep(0.1)  # the server's close arrives while the connection is idle
            assert (await http.send(client, server.url, CALL, AUTH)).status == 200
            assert server.connections == 2
    run(main())


def test_refused_and_bad_urls_are_transport_errors():
    async def main() -> None:
        async with http.make_client(concurrency=2, timeout=5) as client:
            with pytest.raises(TransportError, match="failed: ConnectionRefusedError"):
                await http.send(client, "http://127.0.0.1:9", CALL, AUTH)
            with pytest.raises(TransportError, match="not an http"):
                await http.send(client, "ftp://127.0.0.1", CALL, AUTH)
    run(main())


@pytest.mark.parametrize("auth, call", [
    ({"x-api-key": "k\r\nx-evil: 1"}, CALL),
    ({"x-api-key\r\nx-evil": "1"}, CALL),
    (AUTH, UpstreamCall("POST", "/v1/messages HTTP/1.1\r\nx-evil: 1\r\n\r\nPOST /x", {"m": 1})),
    (AUTH, UpstreamCall("POST", "/v1/models/a b", {"m": 1})),
])
def test_a_header_or_path_that_could_add_a_line_is_refused_before_sending(auth, call):
    async def main() -> None:
        async with Server(answering(ok())) as server, http.make_client(concurrency=2, timeout=5) as client:
            with pytest.raises(InvalidRequest):
                await http.send(client, server.url, call, auth)
            assert server.requests == []
    run(main())


def test_a_base_url_s_path_goes_before_each_call_s_path():
    async def main() -> None:
        async with Server(answering(ok())) as server, http.make_client(concurrency=2, timeout=5) as client:
            await http.send(client, server.url + "/anthropic/", CALL, AUTH)
            assert server.requests[0].startswith(b"POST /anthropic/v1/messages HTTP/1.1\r\n")
    run(main())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def test_tls_is_verified_against_the_trusted_authorities(certificate, monkeypatch):
    cert, key = certificate
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)

    async def main() -> None:
        async with Server(answering(ok()), tls=served) as server:
            with pytest.raises(TransportError, match="failed: SSLCertVerificationError"):
                await calls(server, 1)  # self-signed: not trusted by the system
            trusting = ssl.create_default_context(cafile=str(cert))
            monkeypatch.setattr(http, "_tls_context", trusting)
            answers = await calls(server, 2)
            assert [a.json() for a in answers] == [{"ok": True}] * 2
            assert server.connections == 1  # the refused handshake never reached the server's handler; one reused
            by_name = await calls_to(server.url.replace("127.0.0.1", "localhost"), 1)  # looked up, the name verified
            assert by_name[0].status == 200 and server.connections == 2
    run(main())
