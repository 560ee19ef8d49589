"""One warehouse path per test worker, so dbt's parse of the project carries over between modules.

dbt reuses its last parse (`partial_parse.msgpack`) only while the profile's connection settings
are unchanged, and the DuckDB profile's `path` is `$ACTIVATION_DATA_DIR/warehouse.duckdb`. Each
module's sandbox has a data folder of its own, so without this the first dbt command of every
module (`activation prepare`'s `dbt parse`) parsed the whole project again: about 3 s of CPU,
some 40 times a suite.

`stable_data_dir(folder)` points a symbolic link that keeps one name for the worker's whole
session at `folder`, and hands back the link: the sandbox, dbt and the code location then name
the warehouse by the same path in every module, while each module's files stay in its own folder
(and stay there after the module, for a failure to be read). One module holds the link at a
time; a second sandbox while it is held gets its own folder's path, and only loses the reuse.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from activation.sandbox.launcher import SandboxProcess

_held = False


def _link() -> Path:
    # Per worker process: xdist workers run side by side, each with its own modules.
    return Path(tempfile.gettempdir()) / f"activation-tests-data-{os.getpid()}"


@contextmanager
def stable_data_dir(folder: Path) -> Iterator[Path]:
    """`folder` (created if missing) under the worker's one link name, for the block."""
    global _held
    folder.mkdir(parents=True, exist_ok=True)
    if _held:
        yield folder
        return
    link = _link()
    staged = link.with_name(link.name + ".new")
    staged.unlink(missing_ok=True)
    staged.symlink_to(folder.resolve(), target_is_directory=True)
    if not link.is_symlink():  # the worker's first module: the link goes with the worker
        atexit.register(link.unlink, missing_ok=True)
    staged.replace(link)  # atomic: the name never points nowhere
    _held = True
    try:
        yield link
    finally:
        _held = False


@contextmanager
def worker_sandbox(folder: Path, *sandbox_args: str) -> Iterator[SandboxProcess]:
    """`sandbox_environment` on `folder`, its warehouse named through the worker's link."""
    # Imported here, as the unit modules import the code location: only when a fixture needs it.
    from activation.tooling.demo import sandbox_environment

    with stable_data_dir(folder) as data, sandbox_environment(data, *sandbox_args) as sandbox:
        yield sandbox


def prepare_manifest_in(folder: Path) -> None:
    """`activation prepare`'s dbt parse with the warehouse in `folder`, named through the link."""
    from activation.tooling.demo import prepare_dbt_manifest

    with stable_data_dir(folder) as data, pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACTIVATION_DATA_DIR", str(data))
        prepare_dbt_manifest()
