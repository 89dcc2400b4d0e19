"""What guards ``zoo serve`` against hostile clients, below the routes: the Host check (no DNS
rebinding), the bearer token, the checks of every write (write_check: token, Origin, JSON,
read-only), the request-body limit, and the connection guard (GuardedHTTP: a request's head and
body must arrive in time, and one client address holds a bounded number of connections)."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import re
import secrets
import socket
import time
from typing import Callable, Iterable, Optional, Sequence

import h11
from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from zoo.errors import ZooError

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


# ---- the request: Host header, token, body size ----------------------------------------------
def host_name(value: str) -> Optional[str]:
    """The name in a Host header or an address, lower-case, without its port; an IP address in
    one spelling ('[::1]' for IPv6); None if it is not a host name at all."""
    value = value.strip().lower()
    match = re.fullmatch(r"\[([0-9a-f:.]+)\](?::\d{1,5})?|([0-9a-f:.]*:[0-9a-f:.]*:[0-9a-f:.]*)|([a-z0-9_.-]+)(?::\d{1,5})?",
                         value)
    if match is None:
        return None
    bracketed, bare, name = match.groups()  # [v6][:port], a bare v6 address, name-or-v4[:port]
    try:
        ip = ipaddress.ip_address(bracketed or bare or name)
    except ValueError:
        return (name.rstrip(".") or None) if name else None
    if (bracketed or bare) and ip.version != 6:
        return None
    return f"[{ip}]" if ip.version == 6 else str(ip)


def allowed_host_names(host: str, bound: str, extra: Sequence[str] = ()) -> list[str]:
    """The names a server listening on ``host`` (bound to address ``bound``) answers to: the
    loopback names when it listens on loopback or on every interface, its own addresses, and
    ``extra`` (--allowed_hosts; '*': any)."""
    names = {host_name(host), host_name(bound)}
    wildcard = ipaddress.ip_address(bound).is_unspecified
    if wildcard or is_loopback(host):
        names.update(LOOPBACK_NAMES)
    if wildcard:  # every address of this machine, and its name
        import psutil

        names.update(host_name(a.address.split("%")[0]) for addrs in psutil.net_if_addrs().values() for a in addrs
                     if a.family in (socket.AF_INET, socket.AF_INET6))
        names.add(host_name(socket.gethostname()))
    for name in extra:
        if name != "*" and host_name(name) is None:
            raise ZooError(f"--allowed_hosts: {name!r} is not a host name")
        names.add("*" if name == "*" else host_name(name))
    return sorted(n for n in names if n)


class HostCheck:
    """ASGI middleware: 400 unless the Host header is one of ``names`` (DNS rebinding: a page of
    another site, whose name is made to resolve to this machine, sends its own name)."""

    def __init__(self, app, names: Iterable[str]):
        self.app = app
        self.names = set(names)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or "*" in self.names:
            return await self.app(scope, receive, send)
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_name(host) in self.names:
            return await self.app(scope, receive, send)
        response = JSONResponse({"error": f"Host {host[:100]!r} is not a name of this server; to reach it by that "
                                          "name, start it with --allowed_hosts [NAME]"}, status_code=400)
        return await response(scope, receive, send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host) if host != "::1" else host).is_loopback
    except (OSError, ValueError):
        return False


def bearer_check(token: Optional[str]) -> Callable[[Request], None]:
    """A FastAPI dependency: 401 unless the request carries ``Authorization: Bearer TOKEN``
    (compared in constant time); lets everything through when ``token`` is None."""

    def check_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "this server needs a bearer token (header `Authorization: Bearer TOKEN`)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check_token


def write_check(token: str, read_only: bool = False) -> Callable[[Request], None]:
    """A FastAPI dependency for the endpoints that move files: 403 on a read-only server, 403 when
    an Origin (or Sec-Fetch-Site) header says another site sent it, 415 unless the body is JSON
    (no form a page could post without asking), 401 without ``Authorization: Bearer TOKEN``, even
    on loopback: a write always needs the token (zoo serve prints one at start-up if none is set)."""

    def check_write(request: Request) -> None:
        if read_only:
            raise HTTPException(403, "this server is read-only (--read_only); nothing was changed")
        origin, host = request.headers.get("origin"), request.headers.get("host", "")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            raise HTTPException(403, f"Origin {origin[:100]!r} is not this server; nothing was changed")
        if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
            raise HTTPException(403, "a request from another site; nothing was changed")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            raise HTTPException(415, "a write takes a JSON body (Content-Type: application/json)")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(value.strip().encode(), token.encode()):
            raise HTTPException(401, "moving and undoing need the server's token (header `Authorization: Bearer "
                                     "TOKEN`; zoo serve prints it at start-up)", headers={"WWW-Authenticate": "Bearer"})

    return check_write


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 before anything parses them."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"error": f"request body over {self.max_bytes} bytes"}, status_code=413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await too_large(scope, receive, send)
        chunks, total = [], 0  # without a trustworthy length: read, counting, then replay
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_bytes:
                return await too_large(scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


# ---- the connection ----------------------------------------------------------------------------
class GuardedHTTP(H11Protocol):
    """uvicorn's HTTP/1.1 connection, guarded against clients that hold connections without
    using them. A request's head (request line and headers) must arrive within ``head_timeout``
    seconds of the connection or of the first byte after a response (the keep-alive timeout
    covers an idle connection), and a body may pause for at most ``body_timeout`` seconds. One
    client address holds at most ``per_client`` connections: another one first closes that
    client's longest-open idle connection, or gets 503 itself when none is idle. There is no
    server-wide cap, so no client can starve the others."""

    def __init__(self, *args, head_timeout: float = 5.0, body_timeout: float = 30.0, per_client: int = 32, **kwargs):
        super().__init__(*args, **kwargs)
        self.head_timeout, self.body_timeout, self.per_client = head_timeout, body_timeout, per_client
        self.timer: Optional[asyncio.TimerHandle] = None
        self.opened = time.monotonic()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if self.client is not None:
            mine = [c for c in self.connections if c is not self and isinstance(c, GuardedHTTP)
                    and c.client is not None and c.client[0] == self.client[0] and not c.transport.is_closing()]
            if len(mine) >= self.per_client:
                idle = [c for c in mine if c.idle()]
                if not idle:
                    body = json.dumps({"error": f"too many connections from {self.client[0]}"}).encode()
                    transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                                    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
                    transport.close()
                    return
                min(idle, key=lambda c: c.opened).transport.close()
        self.watch()

    def idle(self) -> bool:
        """Between requests, or before the first one's head is in."""
        return self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch()

    def watch(self) -> None:
        """Arm the timer for what the client owes: a head (from the first wait, not restarted by
        each byte) or the rest of a body (restarted by each piece); none while the server works."""
        state = self.conn.their_state
        if state is not h11.IDLE:
            self.stop_timer()
        if state is h11.SEND_BODY:
            self.timer = self.loop.call_later(self.body_timeout, self.too_slow)
        elif state is h11.IDLE and self.timer is None and not self.transport.is_closing():
            self.timer = self.loop.call_later(self.head_timeout, self.too_slow)

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def too_slow(self) -> None:
        self.timer = None
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.stop_timer()
        super().connection_lost(exc)
