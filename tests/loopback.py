"""Loopback servers for the lean clients' transport tests: a canned AWS endpoint (plain
or TLS, with a throwaway CA) and a forwarding HTTP proxy that records what it carried."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["Answer", "CannedAws", "Proxy", "canned_aws", "forwarding_proxy", "make_ca"]


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class CannedAws:
    """Answers by ``X-Amz-Target`` operation name; records each request's headers."""

    url: str = ""
    answers: dict[str, Answer] = field(default_factory=dict)
    requests: list[dict[str, str]] = field(default_factory=list)

    def answer(self, operation: str, document: object = None, **kwargs: object) -> None:
        body = orjson.dumps(document) if document is not None else b"{}"
        self.answers[operation] = Answer(body=body, **kwargs)  # type: ignore[arg-type]

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        operation = request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        answer = self.answers.get(operation, Answer())
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        return web.Response(
            status=answer.status,
            body=answer.body,
            headers={"Content-Type": "application/x-amz-json-1.0", **answer.headers},
        )


@asynccontextmanager
async def canned_aws(tls: ssl.SSLContext | None = None) -> AsyncIterator[CannedAws]:
    canned = CannedAws()
    app = web.Application()
    app.router.add_post("/", canned._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    canned.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield canned
    finally:
        await runner.cleanup()


def make_ca(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A throwaway CA (its PEM file) and a server context for 127.0.0.1 signed by it."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path, key_path = directory / "server.pem", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_path, key_path)
    return ca_path, server


@dataclass
class Proxy:
    url: str = ""
    #: The request line of every request it forwarded.
    seen: list[str] = field(default_factory=list)


@asynccontextmanager
async def forwarding_proxy() -> AsyncIterator[Proxy]:
    """A plain-HTTP forward proxy: absolute-form requests, one upstream per connection."""
    proxy = Proxy()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, version = head.split(b"\r\n", 1)[0].decode().split(" ")
        proxy.seen.append(f"{method} {target}")
        hostport = target.split("://", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        path = "/" + target.split("://", 1)[1].split("/", 1)[1] if "/" in target[8:] else "/"
        upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
        rest = head.split(b"\r\n", 1)[1]
        upstream_writer.write(f"{method} {path} {version}\r\n".encode() + rest)
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield proxy
    finally:
        server.close()
