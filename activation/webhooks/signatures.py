"""Verifying signed webhook requests: Fivetran's scheme and a generic timestamped scheme.

Pure functions (no HTTP, no Dagster), so every rule is unit-tested directly.

- Fivetran: `X-Fivetran-Signature-256` is the hex HMAC-SHA256 of the raw request body under the
  webhook's secret (Fivetran sends it upper-case; hex is compared case-insensitively). Fivetran
  signs no timestamp, so replays are stopped by the event id alone (see `store`).
- Generic callers (a Snowflake task, a script, any HTTP client): `X-Activation-Timestamp` is the
  Unix time in seconds and `X-Activation-Signature` is `sha256=` + hex HMAC-SHA256 of
  `"<timestamp>.<raw body>"`. Binding the timestamp into the signature means a captured request
  cannot be re-sent with a fresh time; requests outside the tolerance window are refused.

Comparisons are constant-time (`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import time

FIVETRAN_SIGNATURE_HEADER = "X-Fivetran-Signature-256"
TIMESTAMP_HEADER = "X-Activation-Timestamp"
SIGNATURE_HEADER = "X-Activation-Signature"
SIGNATURE_PREFIX = "sha256="
DEFAULT_TOLERANCE_SECONDS = 300


class Rejection(Exception):
    """Why a request was refused, and the HTTP status that says so."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def _hmac_hex(secret: str, message: bytes) -> str:
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def fivetran_signature(secret: str, body: bytes) -> str:
    """The header value Fivetran would send for this body (upper-case hex, as Fivetran does)."""
    return _hmac_hex(secret, body).upper()


def generic_signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """The `X-Activation-Signature` value a generic caller sends."""
    return SIGNATURE_PREFIX + _hmac_hex(secret, f"{timestamp}.".encode() + body)


def verify_fivetran(secret: str, body: bytes, signature: str | None) -> None:
    """Raises `Rejection` 401 when unsigned, 403 when the signature does not match."""
    if not signature:
        raise Rejection(401, f"unsigned: the {FIVETRAN_SIGNATURE_HEADER} header is missing")
    expected = _hmac_hex(secret, body)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Rejection(403, f"forged: {FIVETRAN_SIGNATURE_HEADER} does not match the body")


def verify_generic(
    secret: str,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Raises `Rejection`: 401 unsigned, 403 forged, 403 stale (outside the tolerance window).

    The signature is checked before the clock, so a forger learns nothing from the answer.
    """
    if not signature or not timestamp:
        missing = SIGNATURE_HEADER if not signature else TIMESTAMP_HEADER
        raise Rejection(401, f"unsigned: the {missing} header is missing")
    if not timestamp.strip().isdigit():
        raise Rejection(401, f"unsigned: {TIMESTAMP_HEADER} must be Unix seconds")
    expected = generic_signature(secret, timestamp.strip(), body)
    if not hmac.compare_digest(expected, signature.strip().lower()):
        raise Rejection(403, f"forged: {SIGNATURE_HEADER} does not match timestamp and body")
    age = (time.time() if now is None else now) - int(timestamp)
    if abs(age) > tolerance_seconds:
        raise Rejection(
            403,
            f"stale: the timestamp is {int(age)} s away from now (tolerance "
            f"{int(tolerance_seconds)} s)",
        )
