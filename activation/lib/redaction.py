"""Keeps secrets that travel in URLs and headers out of the log records of httpx and httpcore.

A Slack or Teams webhook URL is a credential in its path, and httpx logs every request at INFO as
`HTTP Request: POST <full URL> "HTTP/1.1 200 OK"`. A deployment that captures httpx's logger
(`python_logs: managed_python_loggers: [httpx]` in dagster.yaml) would otherwise copy the URL into
the run's event log. The filter sits on the emitting loggers rather than on a handler, so it
rewrites each record before any handler sees it, whichever handlers Dagster or a deployment
attaches. URLs keep their scheme and host (enough to tell which service was called); path, query,
fragment and user info are replaced. Authorization values are replaced too, in case a future
httpx or httpcore logs request headers.
"""

from __future__ import annotations

import logging
import re
import threading

# httpcore logs on per-module child loggers; a filter on a parent never sees a child's records.
HTTP_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.connection",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)
REDACTED = "[redacted]"

_URL = re.compile(
    r"(?i)\b(?P<scheme>https?|wss?)://(?:[^\s/?#@'\"<>]*@)?(?P<host>[^\s/?#'\"<>]*)"
    r"(?P<rest>[/?#][^\s'\"<>]*)?"
)
_CREDENTIAL = re.compile(r"(?i)\b(?P<kind>bearer|basic|token)(?P<gap>\s+)[^\s'\",;)\]]+")
_SECRET_HEADER = re.compile(
    r"(?i)(?P<name>authorization|proxy-authorization|cookie|set-cookie|x-api-key)"
    r"(?P<sep>['\"]?\s*[,:=]\s*(?:b?['\"])?)[^'\"\n]+"
)


def redact(text: str) -> str:
    """`text` with URL paths and queries, user info and credential values replaced."""
    text = _URL.sub(
        lambda m: f"{m['scheme']}://{m['host']}" + (f"/{REDACTED}" if m["rest"] else ""), text
    )
    text = _SECRET_HEADER.sub(lambda m: f"{m['name']}{m['sep']}{REDACTED}", text)
    return _CREDENTIAL.sub(lambda m: f"{m['kind']}{m['gap']}{REDACTED}", text)


class RedactHttpSecrets(logging.Filter):
    """Rewrites a record's message with `redact` and drops its args (httpx passes the URL object
    there, where a structured handler would find it)."""

    redacts_http_secrets = True

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: drop what could carry the secret, keep the line
            message = str(record.msg)
        record.msg, record.args = redact(message), ()
        return True


_FILTER = RedactHttpSecrets()
_LOCK = threading.Lock()


def install_http_log_redaction() -> None:
    """Put the filter on httpx's and httpcore's loggers once; cheap to call again."""
    with _LOCK:
        for name in HTTP_LOGGERS:
            logger = logging.getLogger(name)
            if not any(getattr(f, "redacts_http_secrets", False) for f in logger.filters):
                logger.addFilter(_FILTER)
