"""
ndjson over HTTP(S) to Logstash's ``http`` input, acknowledged by the status code: one POST per batch, one kept
aiohttp session. The input must map ``application/x-ndjson`` to the ``json_lines`` codec
(``additional_codecs => {"application/x-ndjson" => "json_lines"}``) and run with ECS compatibility on.
"""

from __future__ import annotations

import asyncio
import base64
import gzip as gzip_module
import ssl as ssl_module
from collections.abc import Callable, Mapping, Sequence

import aiohttp
import yarl

from nodeagent import __version__
from nodeagent.config import redact_url_credentials
from nodeagent.ship import TransportError
from nodeagent.ship.tcp import encode_json_lines

CONTENT_TYPE = "application/x-ndjson"
_GZIP_LEVEL = 6
_REASON_BODY_CHARS = 200  # how much of an error response's body goes into the reason


class HttpStatusError(TransportError):
    """
    The receiver answered with a status other than 2xx. ``retryable`` is true for 408, 429 and 5xx (back off and
    send the batch again); false for the other statuses, which reject the request itself (wrong URL path,
    credentials or method, a redirect, a body too large): retrying the same request cannot succeed until the
    configuration changes.
    """

    def __init__(self, reason: str, status: int, retryable: bool) -> None:
        super().__init__(reason)
        self.status = status
        self.retryable = retryable


_REJECTED_HINTS = {
    400: "the receiver could not read the body (bad compression or content type)",
    401: "authentication failed: check user and password",
    403: "forbidden: check user and password",
    404: "no such path: check the URL",
    405: "method not allowed: check the URL",
    413: "body larger than the receiver accepts (Logstash max_content_length): send smaller batches",
    415: "content type not accepted: map application/x-ndjson to the json_lines codec",
}


class HttpTransport:
    """
    Batches as ndjson to one URL; implements ``nodeagent.ship.Transport`` with ``acknowledged = True``.

    ``send`` makes one POST whose body is every record followed by ``\\n`` (``Content-Type: application/x-ndjson``,
    optionally ``Content-Encoding: gzip``). Logstash answers 2xx only after every event of the body is in its queue,
    so 2xx acknowledges the whole batch and nothing less does. 429 (busy), 408, 5xx, a timeout or a connection error
    raise ``HttpStatusError`` / ``TransportError``; the caller backs off and sends the whole batch again. That
    can duplicate events: a 500 may come after part of the body was already queued (a decode error mid-body), and
    a request that timed out while Logstash's queue was full is still processed later. Every record carries a
    stable event id, which makes those duplicates harmless downstream. Any other status rejects the request (a
    configuration error: wrong path, credentials, redirect); it raises ``HttpStatusError`` with
    ``retryable = False`` and a reason that says so.

    The session is created on the first ``send`` (it must belong to the running loop) and closed by ``aclose``.
    ``timeout`` bounds the whole request, connect to last response byte.
    """

    name = "http"
    acknowledged = True

    def __init__(
        self,
        url: str,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 30.0,
        headers: Mapping[str, str] | None = None,
        gzip: bool = False,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        parsed = yarl.URL(url)
        shown = redact_url_credentials(url)  # for messages: never the password
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"http transport: url {shown!r} must be http://HOST[:PORT][/PATH] or https://...")
        if timeout <= 0:
            raise ValueError(f"http transport: timeout {timeout} must be > 0 seconds")
        if (user is None) != (password is None):
            raise ValueError("http transport: set both user and password, or neither")
        if parsed.user is not None or parsed.password is not None:
            if user is not None:
                raise ValueError("http transport: credentials given both in the url and as user/password; use one")
            user, password = parsed.user or "", parsed.password or ""
            parsed = parsed.with_user(None)
        if ssl is not None and parsed.scheme != "https":
            raise ValueError(f"http transport: an ssl context was given but url {shown!r} is not https")
        self._url = parsed
        # The endpoint appears in logs and metric labels: credentials never do.
        self.endpoint = str(parsed)
        self._ssl: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._timeout_s = timeout
        self._gzip = gzip
        # The body's format and the credentials are this transport's; extra headers cannot override them.
        owned = {"content-type", "content-encoding", "content-length"}
        if user is not None:
            owned.add("authorization")
        extra = {k: v for k, v in (headers or {}).items() if k.lower() not in owned}
        self._headers = {"User-Agent": f"nodeagent/{__version__}", **extra}
        if user is not None and password is not None:
            # Logstash compares the header with "Basic " + base64("user:password"); built here because aiohttp's
            # BasicAuth is deprecated in 3.14 and its replacement does not exist in the 3.9 the agent allows.
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            self._headers["Authorization"] = f"Basic {token}"
        self._headers["Content-Type"] = CONTENT_TYPE
        if gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def send(self, records: Sequence[bytes], on_progress: Callable[[int], None]) -> None:
        """
        POST ``records`` as one ndjson body; ``on_progress(len(records))`` on 2xx.

        Raises:
            ValueError: a record contains a raw newline (nothing is sent).
            HttpStatusError: a non-2xx answer (``retryable`` says whether sending again can help).
            TransportError: timeout, connection refused or lost, TLS failure.
        """
        if not records:
            return
        body = encode_json_lines(records)
        if self._gzip:
            # Compressing a large batch takes milliseconds of CPU: not on the event loop.
            body = await asyncio.to_thread(gzip_module.compress, body, _GZIP_LEVEL)
        session = self._open()
        try:
            async with session.post(
                self._url, data=body, headers=self._headers, ssl=self._ssl, allow_redirects=False
            ) as resp:
                # Read (a bounded part of) the body so the connection can be reused and the reason can quote it.
                text = (await resp.content.read(_REASON_BODY_CHARS)).decode("utf-8", "replace")
                status, phrase = resp.status, resp.reason or ""
        except TimeoutError:
            raise TransportError(
                f"http {self.endpoint}: no answer within {self._timeout_s:g}s "
                "(Logstash blocks requests while its queue is full; the batch may still be queued)"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportError(f"http {self.endpoint}: {type(exc).__name__}: {exc}") from exc
        if 200 <= status < 300:
            on_progress(len(records))
            return
        raise _status_error(self.endpoint, status, phrase, text)

    async def aclose(self) -> None:
        """Close the session and its connections; the next ``send`` creates a new one."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _status_error(endpoint: str, status: int, phrase: str, text: str) -> HttpStatusError:
    said = f"HTTP {status} {phrase}".rstrip() + (f": {text.strip()}" if text.strip() else "")
    if status == 429:
        return HttpStatusError(f"http {endpoint}: {said} (receiver busy; back off and retry)", status, True)
    if status == 408 or status >= 500:
        return HttpStatusError(
            f"http {endpoint}: {said} (receiver failed; retry; part of the batch may already be queued)", status, True
        )
    hint = _REJECTED_HINTS.get(status, "redirects are not followed: use the final URL" if status < 400 else "")
    return HttpStatusError(
        f"http {endpoint}: {said}: request rejected, a configuration error"
        + (f" ({hint})" if hint else "")
        + "; retrying will not help until it is fixed",
        status,
        False,
    )
