"""The stack the end-to-end tests share: sandbox, intake and `dagster dev` on free ports, with a
test's own Hightouch token and webhook secret, stopped (and checked stopped) afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import pytest

from activation.tooling.stack import Stack, running_stack
from tests.support import polling

T = TypeVar("T")


@contextmanager
def e2e_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, *, token: str, secret: str
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HIGHTOUCH_API_TOKEN", token)
        patch.setenv("ACTIVATION_WEBHOOK_SECRET", secret)
        with running_stack(root, "--phase-seconds", "0.05", "--rows", "200") as running:
            yield running
    for process in (running.dagster, running.intake, running.sandbox):
        assert process.process.poll() is not None, f"{process} is still running"


def wait_for(what: str, condition: Callable[[], T | None], timeout: float, stack: Stack) -> T:
    """`condition()` once it is truthy, polled every second; past `timeout`, an AssertionError
    with the tail of dagster dev's log."""
    return polling.wait_for(
        what,
        condition,
        timeout,
        interval=1,
        details=lambda: f"dagster log tail:\n{stack.dagster.log()[-3000:]}",
    )
