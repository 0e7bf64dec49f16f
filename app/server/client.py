"""An HTTP client for one llama-server: JSON endpoints, Prometheus text, and streamed completions.

Standard library only (http.client): a request is a short-lived connection with a timeout on
connecting and on every read, so a server that stops answering costs at most that long. Every way
a request can fail is turned into a `ServerError` with a `ServerErrorKind` and a message that says
what happened and what to do: a name that does not resolve, a host that cannot be reached, a
refused or timed-out connection, a connection closed mid-answer, a 401 (missing or wrong API key),
an endpoint the server was started without (`--metrics`, `--slots`), an answer that is not JSON.
"""

from __future__ import annotations

import enum
import errno
import http.client
import json
import socket
import ssl
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

DEFAULT_TIMEOUT_S = 5.0
# An error body longer than this is not a message for a person; the first part says enough.
_MAX_ERROR_TEXT = 300
# /metrics and JSON answers are small; a larger body is not llama-server's and is not read whole.
MAX_BODY_BYTES = 16 << 20


class ServerErrorKind(enum.Enum):
    BAD_URL = "bad URL"
    UNRESOLVED = "host name not resolved"
    UNREACHABLE = "host unreachable"
    REFUSED = "connection refused"
    TIMEOUT = "timed out"
    DISCONNECTED = "connection closed"
    UNAUTHORIZED = "API key refused"
    NOT_ENABLED = "endpoint not enabled"
    HTTP = "HTTP error"
    PROTOCOL = "unexpected answer"

    @property
    def server_gone(self) -> bool:
        """The server cannot be talked to at all (as opposed to one request or endpoint failing)."""
        return self in (
            ServerErrorKind.UNRESOLVED,
            ServerErrorKind.UNREACHABLE,
            ServerErrorKind.REFUSED,
            ServerErrorKind.DISCONNECTED,
        )


class ServerError(Exception):
    """A request to a server failed; str() is the message for the user."""

    def __init__(self, kind: ServerErrorKind, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


@dataclass(frozen=True)
class ServerAddress:
    """Where a server listens: scheme, host, port and an optional path prefix (a reverse proxy's)."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_port}{self.base_path}"

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_server_url(text: str) -> ServerAddress:
    """ "http://host:port[/prefix]", "host:port" or "host" (http, port 8080, llama-server's default)."""
    raw = text.strip()
    if not raw:
        raise ServerError(
            ServerErrorKind.BAD_URL, "the server URL is empty: give one like http://127.0.0.1:8080"
        )
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urllib.parse.urlsplit(raw)
        port = parts.port
    except ValueError as exc:
        raise ServerError(
            ServerErrorKind.BAD_URL,
            f"{text!r} is not a server URL ({exc}): give one like http://127.0.0.1:8080",
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ServerError(
            ServerErrorKind.BAD_URL, f"{text!r}: only http:// and https:// servers can be watched"
        )
    if not parts.hostname:
        raise ServerError(
            ServerErrorKind.BAD_URL, f"{text!r} names no host: give one like http://127.0.0.1:8080"
        )
    if parts.query or parts.fragment:
        raise ServerError(ServerErrorKind.BAD_URL, f"{text!r}: a server URL has no ?query or #fragment")
    default_port = 443 if parts.scheme == "https" else 8080
    return ServerAddress(parts.scheme, parts.hostname, port or default_port, parts.path.rstrip("/"))


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes
    elapsed_s: float

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _transport_error(exc: BaseException, address: ServerAddress, timeout_s: float) -> ServerError:
    where = address.host_port
    if isinstance(exc, socket.gaierror):
        return ServerError(
            ServerErrorKind.UNRESOLVED,
            f"cannot find the host {address.host!r} ({exc.strerror or exc}): check the name in the URL",
        )
    if isinstance(exc, ConnectionRefusedError):
        return ServerError(
            ServerErrorKind.REFUSED,
            f"{where} refused the connection: nothing listens there. Is llama-server running, "
            "with this --host and --port?",
        )
    if isinstance(exc, TimeoutError | socket.timeout):
        return ServerError(
            ServerErrorKind.TIMEOUT,
            f"{where} did not answer within {timeout_s:g} s (busy, or a firewall drops the packets)",
        )
    if isinstance(exc, ssl.SSLError):
        return ServerError(ServerErrorKind.PROTOCOL, f"the TLS handshake with {where} failed: {exc}")
    if isinstance(exc, ConnectionResetError | BrokenPipeError | http.client.RemoteDisconnected):
        return ServerError(
            ServerErrorKind.DISCONNECTED,
            f"{where} closed the connection before answering in full (the server stopped or restarted?)",
        )
    if isinstance(exc, http.client.IncompleteRead):
        return ServerError(
            ServerErrorKind.DISCONNECTED, f"{where} closed the connection in the middle of its answer"
        )
    if isinstance(exc, http.client.HTTPException):
        return ServerError(
            ServerErrorKind.PROTOCOL,
            f"{where} answered with something that is not HTTP ({type(exc).__name__})",
        )
    if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN):
        return ServerError(
            ServerErrorKind.UNREACHABLE, f"the host {address.host} cannot be reached ({exc.strerror})"
        )
    if isinstance(exc, OSError):
        return ServerError(ServerErrorKind.UNREACHABLE, f"cannot talk to {where}: {exc.strerror or exc}")
    return ServerError(ServerErrorKind.PROTOCOL, f"talking to {where} failed: {type(exc).__name__}: {exc}")


def _error_text(body: bytes) -> str:
    """llama-server's {"error": {"message": ...}} message, else the body's start."""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            text = error["message"]
        elif isinstance(error, str):
            text = error
    text = " ".join(text.split())
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 1] + "…"


class ServerClient:
    """Requests to one server. Thread-safe: every request opens its own connection."""

    def __init__(
        self, url: str | ServerAddress, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        if timeout_s <= 0:
            raise ServerError(ServerErrorKind.BAD_URL, f"the timeout must be positive, not {timeout_s:g} s")
        self.address = url if isinstance(url, ServerAddress) else parse_server_url(url)
        self.api_key = api_key or None
        self.timeout_s = timeout_s

    @property
    def url(self) -> str:
        return self.address.url

    def _connection(self, timeout_s: float) -> http.client.HTTPConnection:
        a = self.address
        if a.scheme == "https":
            return http.client.HTTPSConnection(a.host, a.port, timeout=timeout_s)
        return http.client.HTTPConnection(a.host, a.port, timeout=timeout_s)

    def _headers(self, body: bytes | None) -> dict[str, str]:
        headers = {"Accept": "application/json, text/plain, text/event-stream"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def request(self, method: str, path: str, payload: Any = None) -> HttpReply:
        """One request; the reply whatever its status. Transport failures raise ServerError."""
        body = None if payload is None else json.dumps(payload).encode()
        conn = self._connection(self.timeout_s)
        start = time.monotonic()
        try:
            conn.request(method, self.address.base_path + path, body=body, headers=self._headers(body))
            response = conn.getresponse()
            data = response.read(MAX_BODY_BYTES + 1)
            if len(data) > MAX_BODY_BYTES:
                raise ServerError(
                    ServerErrorKind.PROTOCOL,
                    f"{method} {path} on {self.address.host_port} answered more than "
                    f"{MAX_BODY_BYTES >> 20} MiB: not a llama-server answer",
                )
            return HttpReply(response.status, data, time.monotonic() - start)
        except ServerError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            raise _transport_error(exc, self.address, self.timeout_s) from None
        finally:
            conn.close()

    def check(self, reply: HttpReply, method: str, path: str) -> HttpReply:
        """The reply if it is a success; otherwise the ServerError its status means."""
        if 200 <= reply.status < 300:
            return reply
        where = f"{method} {path} on {self.address.host_port}"
        message = _error_text(reply.body)
        if reply.status in (401, 403):
            hint = (
                "the API key given was refused: check --api-key"
                if self.api_key
                else "the server needs an API key: give it with --api-key"
            )
            return self._raise(ServerErrorKind.UNAUTHORIZED, f"{where}: HTTP {reply.status}, {hint}", reply)
        if reply.status == 501:
            return self._raise(ServerErrorKind.NOT_ENABLED, f"{where}: {message or 'not supported'}", reply)
        if reply.status == 404:
            return self._raise(
                ServerErrorKind.NOT_ENABLED,
                f"{where}: HTTP 404, no such endpoint (an older llama-server, or not a llama-server?)",
                reply,
            )
        return self._raise(
            ServerErrorKind.HTTP, f"{where}: HTTP {reply.status}{f', {message}' if message else ''}", reply
        )

    @staticmethod
    def _raise(kind: ServerErrorKind, message: str, reply: HttpReply) -> HttpReply:
        raise ServerError(kind, message, reply.status)

    def get_json(self, path: str) -> Any:
        reply = self.check(self.request("GET", path), "GET", path)
        return self._json(reply, "GET", path)

    def post_json(self, path: str, payload: Any) -> Any:
        reply = self.check(self.request("POST", path, payload), "POST", path)
        return self._json(reply, "POST", path)

    def get_text(self, path: str) -> str:
        return self.check(self.request("GET", path), "GET", path).text()

    def _json(self, reply: HttpReply, method: str, path: str) -> Any:
        try:
            return json.loads(reply.body)
        except ValueError:
            raise ServerError(
                ServerErrorKind.PROTOCOL,
                f"{method} {path} on {self.address.host_port} answered something that is not JSON "
                f"({_error_text(reply.body)[:80]!r}): is this a llama-server?",
                reply.status,
            ) from None

    @contextmanager
    def stream(
        self, path: str, payload: Any, timeout_s: float | None = None
    ) -> Iterator[Iterator[StreamEvent]]:
        """POST `payload` and read the server-sent events of the answer as they arrive.

        Yields an iterator of `StreamEvent`s (each a `data:` line decoded as JSON, with the time it
        arrived); it ends at `data: [DONE]` or when the server closes the stream. `timeout_s` bounds
        the connection and every wait for the next line. A status other than 2xx raises ServerError
        before anything is yielded; so does an error event inside the stream.
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        body = json.dumps(payload).encode()
        conn = self._connection(timeout)
        try:
            try:
                conn.request("POST", self.address.base_path + path, body=body, headers=self._headers(body))
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise _transport_error(exc, self.address, timeout) from None
            if not 200 <= response.status < 300:
                try:
                    data = response.read(MAX_BODY_BYTES)
                except (OSError, http.client.HTTPException):
                    data = b""
                self.check(HttpReply(response.status, data, 0.0), "POST", path)
            yield self._events(response, path, timeout)
        finally:
            conn.close()

    def _events(
        self, response: http.client.HTTPResponse, path: str, timeout_s: float
    ) -> Iterator[StreamEvent]:
        where = f"POST {path} on {self.address.host_port}"
        while True:
            try:
                line = response.readline(1 << 20)
            except (OSError, http.client.HTTPException) as exc:
                raise _transport_error(exc, self.address, timeout_s) from None
            arrived = time.monotonic()
            if not line:
                return  # the server closed the stream (the caller checks that it had finished)
            text = line.decode("utf-8", errors="replace").strip()
            if text.startswith("error:"):
                raise ServerError(
                    ServerErrorKind.HTTP, f"{where}: the server sent an error: {text[6:].strip()}"
                )
            if not text.startswith("data:"):
                continue  # blank separators, comments, event names
            data = text[5:].strip()
            if data == "[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise ServerError(
                    ServerErrorKind.PROTOCOL, f"{where}: a streamed event is not JSON ({data[:80]!r})"
                ) from None
            if isinstance(event, dict) and "error" in event:
                raise ServerError(
                    ServerErrorKind.HTTP,
                    f"{where}: the server sent an error: {_error_text(json.dumps(event).encode())}",
                )
            yield StreamEvent(arrived, event)


@dataclass(frozen=True)
class StreamEvent:
    t_monotonic_s: float
    data: Any
