"""The review app's guards: loopback binding, Host and Origin checks, a per-session token.

Threats: a web page from elsewhere that the reviewer has open (cross-site request forgery on
the writes), DNS rebinding (a foreign name resolving to 127.0.0.1 to read the API), and other
people on the network (the app binds loopback unless told otherwise).
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

from lvlmva.errors import ConfigError

TOKEN_HEADER = "X-Review-Token"
_LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}
_WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is this machine only."""
    host = host.strip("[]")
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, allow_remote: bool) -> None:
    """Refuse to bind a non-loopback address unless `allow_remote`."""
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"--host {host} would let other machines reach the review app (and its overrides); "
            "bind 127.0.0.1 and use an SSH tunnel, or pass --allow-remote if you mean it"
        )


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _forbidden(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=403)


def guard(token: str, *, remote: bool) -> Callable:
    """Middleware: the Host must be a loopback name (unless `remote`); a write needs the
    token and, when the browser says where it comes from, the same origin."""

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        if not remote and not is_loopback(_host_name(host)):
            return _forbidden(f"Host {host!r} is not this machine")
        if request.method in _WRITE_METHODS:
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{host}":
                return _forbidden(f"cross-origin write from {origin!r} refused")
            site = request.headers.get("Sec-Fetch-Site")
            if site is not None and site not in ("same-origin", "none"):
                return _forbidden(f"write from a {site} page refused")
            sent = request.headers.get(TOKEN_HEADER, "")
            if not secrets.compare_digest(sent.encode(), token.encode()):
                return _forbidden(f"missing or wrong {TOKEN_HEADER}: reload the review page")
        response = await handler(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return middleware
