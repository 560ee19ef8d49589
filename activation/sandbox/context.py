"""Shared state of one sandbox server: settings, the declaration, and the sandbox's own store."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from activation.lib.destinations import Destination, load_destinations
from activation.lib.paths import warehouse_target
from activation.sandbox.warehouse import Warehouse, open_warehouse


@dataclass(frozen=True)
class SandboxSettings:
    data_dir: Path
    rows: int = 1000
    """Customers generated per Airbyte sync; accounts, subscriptions and events scale with it."""
    phase_seconds: float = 0.2
    """How long each phase of an Airbyte job or a Hightouch run lasts."""
    hightouch_token: str | None = None
    """When set, only this Bearer token is accepted; otherwise any non-empty token is."""
    destinations_file: Path | None = None
    warehouse_target: str = field(default_factory=warehouse_target)
    """dbt's target: `duckdb` (the file below) or `postgres` (the ACTIVATION_PG_* variables)."""

    @property
    def warehouse_path(self) -> Path:
        """The DuckDB warehouse file (used when the target is duckdb)."""
        return self.data_dir / "warehouse.duckdb"

    @property
    def raw_dir(self) -> Path:
        return self.data_dir / "raw"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "sandbox.duckdb"


class SandboxStore:
    """The sandbox's own DuckDB file (never the warehouse): CRM records, sync snapshots.

    Only the sandbox process opens it. DuckDB connections are not thread-safe, so each operation
    takes its own cursor; writes that must not interleave hold `lock`.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = duckdb.connect(str(path))
        self.lock = threading.RLock()

    @contextmanager
    def cursor(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cursor = self._connection.cursor()
        try:
            yield cursor
        finally:
            cursor.close()

    def close(self) -> None:
        self._connection.close()


@dataclass
class SandboxContext:
    settings: SandboxSettings
    destinations: tuple[Destination, ...]
    store: SandboxStore
    warehouse: Warehouse
    """Where the Airbyte stand-in lands raw streams and the Hightouch stand-in reads marts."""
    _reset_hooks: list[Callable[[], None]] = field(default_factory=list)
    _shutdown_hooks: list[Callable[[], None]] = field(default_factory=list)

    @classmethod
    def create(cls, settings: SandboxSettings) -> SandboxContext:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.raw_dir.mkdir(parents=True, exist_ok=True)
        # Opened first: a misconfigured warehouse stops the sandbox at start, naming what to set.
        warehouse = open_warehouse(settings.warehouse_target, settings.warehouse_path)
        return cls(
            settings=settings,
            destinations=load_destinations(settings.destinations_file),
            store=SandboxStore(settings.store_path),
            warehouse=warehouse,
        )

    def on_reset(self, hook: Callable[[], None]) -> None:
        """Register what `POST /sandbox/reset` must clear (each stand-in clears its own state)."""
        self._reset_hooks.append(hook)

    def on_shutdown(self, hook: Callable[[], None]) -> None:
        """Register what must stop when the server stops (worker threads)."""
        self._shutdown_hooks.append(hook)

    def reset(self) -> None:
        for hook in self._reset_hooks:
            hook()

    def shutdown(self) -> None:
        for hook in reversed(self._shutdown_hooks):
            hook()
        self.store.close()
