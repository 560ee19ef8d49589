from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from activation.sandbox.launcher import SandboxProcess, start_sandbox

os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[SandboxProcess]:
    """A fresh sandbox server on a free port with its own data folder, stopped after the test."""
    process = start_sandbox(tmp_path / "data", "--phase-seconds", "0.05")
    try:
        yield process
    finally:
        process.stop()
