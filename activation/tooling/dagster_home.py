"""Which Dagster instance a command opens: one that exists, found and never created.

`activation approve|reject` must record the decision in the instance the promote run lives in.
Dagster creates an instance's files wherever DAGSTER_HOME points, so a wrong home would quietly
become a new, empty instance; this module refuses such a home before Dagster sees it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from activation.lib.paths import data_dir

if TYPE_CHECKING:
    import dagster as dg

HOME_VAR = "DAGSTER_HOME"
HOME_OPTION = "--dagster-home"
# What a Dagster home holds once an instance has been created in it (or configured for it).
INSTANCE_MARKERS = ("dagster.yaml", "storage", "history")


LOCAL_INSTANCE_YAML = """\
# Written by activation for a local instance (make dev, the test stack, the benchmarks), as
# deploy/dagster.yaml does for production: a queued run starts within a second of being queued
# (Dagster's default looks every 5 s), since a signal's syncs wait on it.
run_queue:
  dequeue_interval_seconds: 1
"""


def write_local_instance_config(home: Path) -> None:
    """Give a local Dagster home its dagster.yaml, unless it has one with content (the user's)."""
    config = home / "dagster.yaml"
    if not config.exists() or not config.read_text().strip():
        config.write_text(LOCAL_INSTANCE_YAML)


def dev_home() -> Path:
    """The instance `activation dev` (`make dev`) runs against."""
    return data_dir() / "dagster_home"


class HomeError(RuntimeError):
    """No usable Dagster home; the message is one line saying what to pass."""


@dataclass(frozen=True)
class DagsterHome:
    path: Path
    named_by: str
    """Where the path came from: the option, the variable, or the dev instance."""
    dev: bool = False
    """Taken as the fallback (DAGSTER_HOME unset): the caller says so."""

    def __str__(self) -> str:
        return f"{self.path} (from {self.named_by})"


def resolve_home(option: str | None, environ: Mapping[str, str]) -> DagsterHome:
    """`--dagster-home`, else DAGSTER_HOME, else the dev instance if there is one; then checked.

    Raises `HomeError` when none is given, or the one given does not exist or holds no instance.
    """
    if option:
        home = DagsterHome(Path(option).expanduser().resolve(), HOME_OPTION)
    elif environ.get(HOME_VAR, "").strip():
        home = DagsterHome(Path(environ[HOME_VAR].strip()).expanduser().resolve(), HOME_VAR)
    elif holds_instance(dev_home()):
        home = DagsterHome(dev_home(), f"the dev instance; {HOME_VAR} is unset", dev=True)
    else:
        raise HomeError(
            f"no Dagster instance given: {HOME_VAR} is unset and there is no dev instance at "
            f"{dev_home()}; pass {HOME_OPTION} PATH (the home of the Dagster that runs promote) "
            f"or set {HOME_VAR}"
        )
    check_home(home)
    return home


def holds_instance(path: Path) -> bool:
    return path.is_dir() and any((path / marker).exists() for marker in INSTANCE_MARKERS)


def check_home(home: DagsterHome) -> None:
    """Refuse a home Dagster would have to create, so nothing is written to a wrong path."""
    hint = f"pass {HOME_OPTION} with the home of the Dagster that runs promote"
    if not home.path.exists():
        raise HomeError(f"the Dagster home {home} does not exist; {hint}")
    if not home.path.is_dir():
        raise HomeError(f"the Dagster home {home} is not a directory; {hint}")
    if not holds_instance(home.path):
        raise HomeError(
            f"{home} holds no Dagster instance (no dagster.yaml, storage/ or history/); {hint}"
        )


@contextmanager
def open_instance(home: DagsterHome) -> Iterator[dg.DagsterInstance]:
    """The instance at `home`, through the public `DagsterInstance.get()` (which reads
    DAGSTER_HOME); the variable is restored once the instance is open. Dagster is imported only
    here, so a wrong home is refused at once."""
    import dagster as dg

    saved = os.environ.get(HOME_VAR)
    os.environ[HOME_VAR] = str(home.path)
    try:
        instance = dg.DagsterInstance.get()
    except Exception as error:  # a malformed dagster.yaml, an unreachable database, ...
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise HomeError(f"could not open the Dagster instance at {home}: {first_line}") from error
    finally:
        if saved is None:
            os.environ.pop(HOME_VAR, None)
        else:
            os.environ[HOME_VAR] = saved
    with instance:
        yield instance
