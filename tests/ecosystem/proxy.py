"""A real TCP forwarder in front of a control plane, to break connections as networks do."""

from __future__ import annotations

import asyncio
import contextlib
import ssl


class Proxy:
    """Forward loopback connections to a target port; cut, refuse or swallow them on demand.

    With `tls`, it terminates TLS (ALPN h2, as gRPC needs) and forwards plaintext, like an
    ingress in front of the control plane.
    """

    def __init__(self, target_port: int, *, tls: ssl.SSLContext | None = None) -> None:
        """Forward to 127.0.0.1:target_port once started."""
        self.target_port = target_port
        self._tls = tls
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0
        # Connections to close at once, before forwarding anything (a failing server).
        self.refuse = 0
        # Whether new connections are held open without forwarding (a wedged server).
        self.swallow = False

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", 0, ssl=self._tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.add(writer)
        if self.refuse:
            self.refuse -= 1
            writer.transport.abort()
            return
        if self.swallow:
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Drop every open connection; new ones are still accepted."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        """Stop listening and drop every connection."""
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def tls_server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Return a server TLS context that speaks HTTP/2, as gRPC clients insist on."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context
