"""Who is calling: named API keys (one tenant each) and the middleware that checks them.

A key is a secret: it is never logged, never put in an error message, never in a repr. The
tenant name is what the rest of the server sees (``request.state.plait_tenant``, read by
``streams.request_scope``).
"""

from __future__ import annotations

import hmac
import json
import posixpath
import re
from typing import Any
from urllib.parse import quote

from starlette.responses import JSONResponse  # what fastapi.responses re-exports, without fastapi

from plait.runtime.limits import MAX_CACHE_SCOPE_CHARS
from plait.runtime.server.error_bodies import error_body

DEFAULT_TENANT = "default"  # the tenant of the single ``--api-key``
UNAUTHENTICATED = ("/health",)  # the load balancer's probe needs no key
_SLASHES = re.compile(r"/{2,}")


class ApiKeys:
    """Tenant name -> key. Invariants: at least one key; names and keys non-empty and unique;
    a key is printable ASCII without whitespace (it travels in an HTTP header). The repr
    shows the tenant names only."""

    def __init__(self, keys: dict[str, str]) -> None:
        if not keys:
            raise ValueError("no API keys given")
        seen: dict[str, str] = {}
        for name, key in keys.items():
            if not isinstance(name, str) or not 0 < len(name) <= MAX_CACHE_SCOPE_CHARS:
                raise ValueError(f"a tenant name must have 1 to {MAX_CACHE_SCOPE_CHARS} characters")
            if not isinstance(key, str) or not key or not _is_header_token(key):
                raise ValueError(f"tenant {name!r}: the key must be printable ASCII, no spaces")
            if key in seen:
                raise ValueError(f"tenants {seen[key]!r} and {name!r} have the same key")
            seen[key] = name
        self._entries = tuple((name, f"Bearer {key}".encode()) for name, key in keys.items())

    def __repr__(self) -> str:
        return f"ApiKeys(tenants={self.tenants})"

    @property
    def tenants(self) -> list[str]:
        return [name for name, _ in self._entries]

    @classmethod
    def load(cls, api_key: str | None = None, key_file: str | None = None) -> ApiKeys | None:
        """The keys of ``--api-key`` (tenant ``default``) and ``--api-key-file``; None if
        neither is given (then the server is open)."""
        keys: dict[str, str] = {}
        if key_file is not None:
            with open(key_file, encoding="utf-8") as f:
                keys = parse_key_file(f.read(), key_file)
        if api_key is not None:
            if DEFAULT_TENANT in keys:
                raise ValueError(f"{key_file} names a tenant {DEFAULT_TENANT!r}, as --api-key does")
            keys[DEFAULT_TENANT] = api_key
        return cls(keys) if keys else None

    def tenant_of(self, authorization: bytes) -> str | None:
        """The tenant whose ``Bearer KEY`` is ``authorization``, or None. Every key is compared,
        in constant time each, whichever matches, so the time taken does not reveal which key
        (or how much of one) the caller got right."""
        found = None
        for name, expected in self._entries:
            if hmac.compare_digest(authorization, expected):
                found = name
        return found


def parse_key_file(text: str, source: str) -> dict[str, str]:
    """A JSON object ``{"name": "key", ...}``, or lines ``name: key`` (blank lines and lines
    starting with ``#`` are skipped). Errors name the line, never its key."""
    if text.lstrip().startswith("{"):
        try:
            keys = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON (line {e.lineno})") from None
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
            raise ValueError(f"{source}: must map tenant names to key strings")
        return keys
    keys = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, key = line.partition(":")
        name, key = name.strip(), key.strip()
        if not sep or not name or not key:
            raise ValueError(f"{source} line {number}: expected 'name: key'")
        if name in keys:
            raise ValueError(f"{source} line {number}: tenant {name!r} appears twice")
        keys[name] = key
    return keys


def _is_header_token(key: str) -> bool:
    return key.isascii() and key.isprintable() and not any(c.isspace() for c in key)


def normalize_path(path: str) -> str:
    """The one spelling of a (percent-decoded) path that routing and the key check both see:
    repeated slashes collapsed, ``.`` and ``..`` resolved, no trailing slash. ``/health/``
    and ``//health`` are ``/health``; uvicorn already decoded ``/%68ealth`` to it."""
    path = posixpath.normpath(_SLASHES.sub("/", path or "/"))
    return path if path.startswith("/") else "/" + path


class AuthMiddleware:
    """Normalises every HTTP request's path (for the routes and for this check alike, so no
    spelling of a path skips the key); with ``keys``, every path but ``/health`` needs
    ``Authorization: Bearer KEY`` (401 otherwise) and the request carries its tenant."""

    def __init__(self, app: Any, keys: ApiKeys | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = normalize_path(scope["path"])
        scope = {**scope, "path": path, "raw_path": quote(path).encode()}
        tenant = None
        if self.keys is not None and path not in UNAUTHENTICATED:
            given = dict(scope["headers"]).get(b"authorization", b"")
            tenant = self.keys.tenant_of(given)
            if tenant is None:
                body = error_body("missing or wrong API key", None, 401, "authentication_error")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        scope["state"] = {**scope.get("state", {}), "plait_tenant": tenant}
        await self.app(scope, receive, send)
