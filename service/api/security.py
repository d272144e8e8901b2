"""Browser-safe access: API keys, JSON-only bodies, allowed Host values, CORS (off by default)."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.config.cors import CORSConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Headers
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.allowed_hosts import AllowedHostsMiddleware
from litestar.types import Receive, Scope, Send

from service.config import PREFIX, Settings, SettingsError
from service.errors import InvalidHost, Unauthorized, UnsupportedMediaType

LOOPBACK = ("localhost", "127.0.0.1", "[::1]")
_BODY_METHODS = {"POST", "PUT", "PATCH"}
WWW_AUTHENTICATE = 'Bearer realm="MiniVault"'


def key_id(key: str) -> str:
    """A short, non-reversible id for a key, for the log: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


class KeyRing:
    """The accepted API keys; `identify` compares in constant time and returns a key's id."""

    def __init__(self, keys: list[str]) -> None:
        self._keys = [(k.encode(), key_id(k)) for k in dict.fromkeys(keys)]

    def __len__(self) -> int:
        return len(self._keys)

    def identify(self, presented: str | None) -> str | None:
        """The id of the presented key if it is one of ours, else None (every key is compared)."""
        if not presented:
            return None
        given = presented.encode()
        found = None
        for key, kid in self._keys:
            if hmac.compare_digest(key, given):  # no early exit: the time does not say which key matched
                found = kid
        return found


def load_keyring(settings: Settings) -> KeyRing | None:
    """The keys of MINIVAULT_API_KEYS and MINIVAULT_API_KEYS_FILE, or None when neither is set."""
    keys = Settings.split(settings.api_keys)
    if settings.api_keys_file:
        path = Path(settings.api_keys_file)
        try:
            text = path.read_text("utf-8")
        except OSError as exc:
            raise SettingsError(f"{PREFIX}API_KEYS_FILE={path}: cannot read it: {exc.strerror}") from None
        keys += [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise SettingsError(f"{PREFIX}API_KEYS_FILE={path} holds no key (one per line, # for comments)")
    if any(len(k) < 8 or any(c.isspace() or c == "," for c in k) for k in keys):
        raise SettingsError(f"{PREFIX}API_KEYS: every key needs 8+ characters and no spaces or commas")
    return KeyRing(keys) if keys else None


def presented_key(connection: ASGIConnection) -> str | None:
    """The key sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = connection.headers.get("authorization", "")
    scheme, _, value = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.headers.get("x-api-key", "").strip() or None


def is_public(connection: ASGIConnection, handler: BaseRouteHandler | None) -> bool:
    """Routes that never need a key: /health, the playground page, the OpenAPI schema, preflights,
    and /metrics when MINIVAULT_METRICS_PUBLIC is on."""
    if connection.scope.get("method") == "OPTIONS" or connection.url.path.startswith("/schema"):
        return True
    if handler is None:
        return False
    if handler.opt.get("metrics"):
        return connection.app.state.settings.metrics_public
    return bool(handler.opt.get("public"))


def authenticate(connection: ASGIConnection) -> None:
    """Raise Unauthorized unless keys are off or a valid key was sent; remember the key's id."""
    keyring: KeyRing | None = connection.app.state.keyring
    if keyring is None:
        return
    presented = presented_key(connection)
    kid = keyring.identify(presented)
    if kid is None:
        if presented is None:
            raise Unauthorized("this server needs an API key: send `Authorization: Bearer KEY` or `X-API-Key: KEY`")
        raise Unauthorized("the API key is not valid")
    connection.scope.setdefault("state", {})["key_id"] = kid


def is_json(content_type: str) -> bool:
    """application/json, with no charset or charset=utf-8 (JSON is UTF-8)."""
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/json":
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            return False
    return True


async def guard(connection: ASGIConnection, handler: BaseRouteHandler) -> None:
    """The app-wide guard (runs before the body is read): the key, then the body's content type.

    Async because it never blocks: Litestar runs a sync guard in a worker thread, a hop there and
    back on every request (stamped: ~0.3 ms of a short prompt's first token after an idle moment).
    """
    if not is_public(connection, handler):
        authenticate(connection)
    if connection.scope.get("method") in _BODY_METHODS:
        content_type = connection.headers.get("content-type", "")
        if not is_json(content_type):
            # a browser's cross-origin "simple" request can only send text/plain or form types
            raise UnsupportedMediaType(
                f"Content-Type must be application/json, got {content_type[:100]!r}" if content_type
                else "Content-Type must be application/json (the header is missing)", field="Content-Type")


def hostname(host: str) -> str:
    """The name part of a Host header: `[::1]:8000` -> `[::1]`, `localhost:8000` -> `localhost`."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class HostCheck(AllowedHostsMiddleware):
    """Litestar's allowed-hosts matching (exact names, `*.domain`, `*`) on the Host header's name.

    The port is left out: a rebinding page can choose its port but not make the browser send
    another name, and a published or proxied port need not be known in advance.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        host = Headers.from_scope(scope).get("host", "")
        if self.allowed_hosts_regex is None or self.allowed_hosts_regex.fullmatch(hostname(host).lower()):
            await self.app(scope, receive, send)
            return
        raise InvalidHost(f"Host {host[:100]!r} is not one this server answers to: add it to "
                          f"{PREFIX}ALLOWED_HOSTS if it should be", field="Host")


def allowed_hosts(settings: Settings) -> DefineMiddleware:
    """The Host check: loopback names, the listen address and MINIVAULT_ALLOWED_HOSTS, any port.
    /health is exempt (container and Kubernetes probes use the pod's or container's IP)."""
    names = list(LOOPBACK)
    host = settings.host.strip()
    if host not in ("", "0.0.0.0", "::"):
        names.append(f"[{host}]" if ":" in host and not host.startswith("[") else host)
    names += [hostname(name) for name in Settings.split(settings.allowed_hosts)]
    config = AllowedHostsConfig(allowed_hosts=[n.lower() for n in dict.fromkeys(names)], exclude=["^/health$"])
    return DefineMiddleware(HostCheck, config=config)


def cors_config(settings: Settings) -> CORSConfig | None:
    """CORS for MINIVAULT_CORS_ORIGINS only; None (off) when it is empty."""
    origins = Settings.split(settings.cors_origins)
    if not origins:
        return None
    return CORSConfig(
        allow_origins=origins, allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
        expose_headers=["X-Request-ID"], max_age=600,
    )
