"""Waiting for something another process does: one polling loop for the suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    what: str,
    condition: Callable[[], T | None],
    timeout: float = 120,
    interval: float = 0.3,
    details: Callable[[], str] | None = None,
) -> T:
    """`condition()` once it is truthy, polled every `interval` seconds; past `timeout`, an
    AssertionError naming `what`, followed by `details()` when given (a log tail)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    suffix = f"; {details()}" if details else ""
    raise AssertionError(f"{what} within {timeout}s{suffix}")
