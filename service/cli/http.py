"""HTTP client helpers for the CLI: request bodies, one error per failure kind, exit codes."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import httpx

from service.errors import one_line

DEFAULT_URL = "http://127.0.0.1:8000"

# Exit codes of the `minivault` command (its --help lists them too: keep both in step).
OK = 0
GENERIC = 1  # anything else: a failed download or conversion, a broken connection
USAGE = 2  # bad flags or settings
UNREACHABLE = 3  # no server answers at the URL
REJECTED = 4  # the server refused the request (4xx other than 429)
BUSY = 5  # queue full (429) or not ready / shutting down (503): retry later
SERVER = 6  # the server failed (5xx other than 503)
INTERRUPTED = 130  # Ctrl-C


class ClientError(Exception):
    """A failure to report as one line on stderr, exiting with `code`."""

    def __init__(self, message: str, code: int = GENERIC) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def default_url() -> str:
    """MINIVAULT_URL, or the loopback default."""
    return os.environ.get("MINIVAULT_URL") or DEFAULT_URL


def is_loopback(url: str) -> bool:
    """Whether `url` points at this machine (then proxy variables must not apply)."""
    host = httpx.URL(url).host
    return host in ("localhost", "::1") or host.startswith("127.")


def generation_body(prompt: str, **params: Any) -> dict[str, Any]:
    """A /generate body: the prompt plus only the parameters given (the server fills in the rest)."""
    body: dict[str, Any] = {"prompt": prompt}
    for name, value in params.items():
        if value is None or (name == "stop" and not value):
            continue
        body[name] = list(value) if name == "stop" else value
    return body


def error_for(response: httpx.Response) -> ClientError:
    """The ClientError for a non-2xx response, carrying the server's own message."""
    status = response.status_code
    message = _server_message(response)
    if status in (429, 503):
        retry = response.headers.get("retry-after")
        hint = f"; retry in {retry} s" if retry else "; retry later"
        return ClientError(f"server busy ({status}): {message}{hint}", BUSY)
    if 400 <= status < 500:
        return ClientError(f"request rejected ({status}): {message}", REJECTED)
    return ClientError(f"server error ({status}): {message}", SERVER)


def _server_message(response: httpx.Response) -> str:
    """The error body's message (naming its field), else the start of whatever the body is."""
    try:
        response.read()
    except httpx.HTTPError:
        return response.reason_phrase or "no details"
    try:
        error = response.json()["error"]
        message, field = str(error["message"]).strip(), error.get("field")
        if message:
            return message if not field or field in message else f"{field}: {message}"
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return " ".join(response.text.split())[:200] or response.reason_phrase or "no details"


class Client:
    """A MiniVault server at `url`; every failure is raised as a ClientError."""

    def __init__(self, url: str | None = None, timeout: float = 300.0) -> None:
        self.url = (url or default_url()).rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ClientError(f"bad server URL {self.url!r}: it must start with http:// or https://", USAGE)
        try:
            # connecting must be quick; a generation may take up to the server's own timeout
            key = os.environ.get("MINIVAULT_API_KEY", "").strip()  # for a server with MINIVAULT_API_KEYS set
            self._http = httpx.Client(
                base_url=self.url, timeout=httpx.Timeout(timeout, connect=5.0), trust_env=not is_loopback(self.url),
                headers={"Authorization": f"Bearer {key}"} if key else None,
            )
        except httpx.InvalidURL as exc:
            raise ClientError(f"bad server URL {self.url!r}: {one_line(exc)}", USAGE) from None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST a JSON body and return the JSON reply."""
        with self._call():
            response = self._http.post(path, json=body)
        return self._json(response)

    def generate(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /generate: the whole response."""
        return self.post_json("/generate", body)

    def stream(self, body: dict[str, Any]) -> Iterator[str]:
        """POST /generate/stream: each chunk of text as it arrives.

        Closing the iterator (or an exception such as KeyboardInterrupt while it runs)
        closes the connection, which the server takes as a cancel.
        """
        with self._call(), self._http.stream("POST", "/generate/stream", json=body) as response:
            if response.status_code != 200:
                raise error_for(response)
            decoder = _utf8_decoder()
            for raw in response.iter_raw():
                text = decoder.decode(raw)
                if text:
                    yield text
            tail = decoder.decode(b"", final=True)
            if tail:
                yield tail

    def health(self) -> dict[str, Any]:
        """The server's /health body (a draining server's 503 is an error)."""
        with self._call():
            response = self._http.get("/health")
        return self._json(response)

    def events(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST a streamed /v1 request: the JSON of each Server-Sent Event, until `[DONE]`."""
        with self._call(), self._http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                raise error_for(response)
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue  # blank separators, `event:` names
                if line == "data: [DONE]":
                    return
                try:
                    event = json.loads(line[6:])
                except ValueError:
                    raise ClientError(f"the server at {self.url} sent an event that is not JSON", SERVER) from None
                if isinstance(event, dict) and "error" in event:  # a generation failed mid-stream
                    raise ClientError(f"server error mid-stream: {(event['error'] or {}).get('message')}", SERVER)
                yield event

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        if not response.is_success:
            raise error_for(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"the server at {self.url} did not answer with JSON", SERVER) from None

    def _call(self) -> "_Translate":
        return _Translate(self.url)


class _Translate:
    """Context manager: turn httpx transport errors into ClientErrors with the right exit code."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, httpx.InvalidURL):
            raise ClientError(f"bad server URL {self.url!r}: {one_line(exc)}", USAGE) from None
        if not isinstance(exc, httpx.HTTPError):
            return False
        raise translate(exc, self.url) from None


def translate(exc: httpx.HTTPError, url: str) -> ClientError:
    """The ClientError for an httpx transport failure."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return ClientError(f"cannot reach the server at {url}: {one_line(exc)} (is `minivault serve` running?)",
                           UNREACHABLE)
    if isinstance(exc, httpx.UnsupportedProtocol):
        return ClientError(f"bad server URL {url!r}: {one_line(exc)}", USAGE)
    if isinstance(exc, httpx.TimeoutException):
        return ClientError(f"the server at {url} did not answer in time ({type(exc).__name__})", GENERIC)
    if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError)):
        return ClientError(f"the connection to {url} was cut mid-response: {one_line(exc)}", GENERIC)
    return ClientError(f"request to {url} failed: {one_line(exc)}", GENERIC)


def _utf8_decoder():
    import codecs

    return codecs.getincrementaldecoder("utf-8")(errors="replace")
