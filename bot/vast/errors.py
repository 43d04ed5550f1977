"""Typed errors of the Vast.ai client, each readable by an operator and never carrying the API key."""

from __future__ import annotations

import json
from typing import Any

# Error codes Vast puts in the ``error`` field, grouped by what they mean for us.
AUTH_CODES = frozenset({"auth_error", "not_authorized", "unauthorized", "invalid_api_key"})
NOT_FOUND_CODES = frozenset({"no_such_instance", "not_found", "invalid_id"})
RATE_LIMIT_CODES = frozenset({"rate_limit_exceeded"})
UNAVAILABLE_MARKERS = ("no_such_ask", "already rented", "is not available")

# What the operator should do, by error class; appended to the message.
_HINTS: dict[str, str] = {
    "VastAuthError": "check VAST_API_KEY (console.vast.ai > Account > API Keys) and its permissions",
    "VastRateLimited": "Vast is throttling this endpoint; slow down polling",
    "VastUnavailableOffer": "the offer was taken or withdrawn; pick another offer",
    "VastServerError": "Vast is having trouble; try again later",
    "VastTransportError": "Vast could not be reached or did not answer; check the network or VAST_API_URL",
}


class VastError(Exception):
    """Base of every Vast client error: HTTP ``status`` (None without a response), Vast ``code``, text."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        endpoint: str | None = None,
        attempts: int = 1,
    ) -> None:
        self.message = message
        self.status = status
        self.code = code
        self.endpoint = endpoint
        self.attempts = attempts
        super().__init__(message)

    def __str__(self) -> str:
        parts = []
        if self.endpoint:
            parts.append(f"Vast {self.endpoint}:")
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(f"[{self.code}]")
        parts.append(self.message)
        if self.attempts > 1:
            parts.append(f"(after {self.attempts} attempts)")
        text = " ".join(parts)
        hint = _HINTS.get(type(self).__name__)
        return f"{text} — {hint}" if hint else text


class VastAuthError(VastError):
    """The API key is missing, wrong or lacks a permission (401/403, or Vast's 404 ``auth_error``)."""


class VastNotFound(VastError):
    """The instance (or other object) does not exist."""


class VastRateLimited(VastError):
    """HTTP 429 (or ``rate_limit_exceeded``) still coming back after the retry budget."""


class VastUnavailableOffer(VastError):
    """The offer cannot be rented any more (``no_such_ask``: already rented or withdrawn)."""


class VastServerError(VastError):
    """Vast answered 5xx (after the retry budget where the call was retryable)."""


class VastTransportError(VastError):
    """No usable answer: connection refused/dropped or timed out, after retries where allowed.

    ``request_sent`` is False only when the request provably never reached the server
    (connect error or connect timeout), which makes even a create safe to repeat.
    """

    def __init__(self, message: str, *, request_sent: bool = True, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.request_sent = request_sent


class VastResponseError(VastError):
    """Vast answered something we cannot use: malformed JSON, or ``success: false`` with an unknown code."""


class VastRequestRejected(VastError):
    """Vast refused the request as invalid (other 4xx: ``invalid_args``, ``label_too_long``, ...)."""


class VastDestroyUnconfirmed(VastError):
    """Destroy was requested but the instance was still listed when the confirmation budget ran out."""


class VastLogsNotReady(VastError):
    """The host never uploaded the requested log to ``result_url`` within the polling budget."""


def parse_error_body(body: str | bytes | None) -> tuple[str | None, str]:
    """Return ``(code, message)`` from any of Vast's error body shapes (JSON or plain text)."""
    if body is None:
        return None, ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        data = json.loads(text)
    except ValueError:
        return None, _shorten(text.strip())
    if not isinstance(data, dict):
        return None, _shorten(text.strip())
    code = data.get("error")
    message = data.get("msg") or data.get("message") or data.get("detail") or ""
    return (str(code) if code else None), _shorten(str(message))


def error_from_response(
    status: int, body: str | bytes | None, *, endpoint: str | None = None
) -> VastError:
    """Map an HTTP error (or a ``success: false`` body with ``status`` 2xx) to the typed error."""
    code, message = parse_error_body(body)
    lowered = f"{code or ''} {message}".lower()
    kwargs: dict[str, Any] = {"status": status, "code": code, "endpoint": endpoint}
    message = message or _default_message(status)
    if status == 429 or (code in RATE_LIMIT_CODES):
        return VastRateLimited(message, **kwargs)
    if status in (401, 403) or code in AUTH_CODES or "invalid user key" in lowered:
        return VastAuthError(message, **kwargs)
    if status == 410 or any(marker in lowered for marker in UNAVAILABLE_MARKERS):
        return VastUnavailableOffer(message, **kwargs)
    if status == 404 or code in NOT_FOUND_CODES:
        return VastNotFound(message, **kwargs)
    if status >= 500:
        return VastServerError(message, **kwargs)
    if 400 <= status < 500:
        return VastRequestRejected(message, **kwargs)
    return VastResponseError(message or "success: false without an error code", **kwargs)


def _default_message(status: int) -> str:
    if status >= 500:
        return "server error"
    if status == 429:
        return "API requests too frequent"
    return "request failed"


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
