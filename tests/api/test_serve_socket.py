"""The listening socket `otb serve` makes: kept-alive answers must not wait for delayed ACKs."""

from __future__ import annotations

import asyncio
import socket

from producer.cli.serving import _listen


def test_accepted_connections_get_tcp_nodelay():
    """asyncio sets TCP_NODELAY only when the listening socket's proto is IPPROTO_TCP; without it each
    answer on a kept-alive connection stalled 40 ms (headers and body are two writes: Nagle + delayed ACK)."""
    listener = _listen("127.0.0.1", 0)
    seen: list[int] = []

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        for _ in range(100):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
        server.close()

    asyncio.run(main())
    assert seen and seen[0] != 0
