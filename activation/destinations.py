"""The destinations declaration: loaded and validated once, used by the assets and the sandbox.

A YAML file rather than dbt `meta`: the sandbox and the sync assets need the declaration without a
dbt parse, operators edit one short file per destination change, and validation errors can name
the file and the field precisely.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Literal

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from activation.paths import destinations_file

SYNC_KEY_PREFIX = "activate"


def sync_asset_key_for(destination_key: str) -> dg.AssetKey:
    """`activate/<key>`: the asset of a destination's Hightouch sync (one place builds it)."""
    return dg.AssetKey([SYNC_KEY_PREFIX, destination_key])


DestinationType = Literal["salesforce", "hubspot", "iterable", "braze"]
_IDENTIFIER = r"^[a-z][a-z0-9_]*$"


class DestinationsFileError(ValueError):
    """The declaration is malformed; the message names the file and the field."""


class Owner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    team: str = Field(description="Team that owns the destination; shown in the asset graph.")
    slack_channel: str = Field(description="Slack channel told about this destination's runs.")
    pagerduty_routing_key_env: str = Field(
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Name of the environment variable holding the owner's PagerDuty routing key.",
    )


class FailurePolicy(BaseModel):
    """How many rows a Hightouch run may fail before the sync step fails (or warns)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_failed_rows: int | None = Field(
        default=None, ge=0, description="Most failed rows a run may have; unset means no limit."
    )
    max_failed_ratio: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Largest share of planned rows that may fail (0.01 = 1 %); unset: no limit.",
    )
    on_exceed: Literal["fail", "warn"] = Field(
        default="fail", description="Fail the step, or only warn, when a limit is exceeded."
    )


class Guards(BaseModel):
    """Limits checked in the warehouse before a trigger; over a limit the sync is blocked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_removed_ratio: float | None = Field(default=None, ge=0, le=1)
    max_changed_ratio: float | None = Field(default=None, ge=0, le=1)
    max_removed_rows: int | None = Field(default=None, ge=0)
    max_changed_rows: int | None = Field(default=None, ge=0)
    required_columns: tuple[str, ...] = Field(
        default=(), description="Mapped columns that must never be null (primary key always is)."
    )


class Destination(BaseModel):
    """One Hightouch sync fed by one activation mart."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str = Field(pattern=_IDENTIFIER, description="Stable name; becomes the asset key.")
    description: str = ""
    destination_type: DestinationType
    object: str = Field(description="The CRM object the sync writes (Account, contacts, users).")
    sync_id: str | None = Field(default=None, pattern=r"^[0-9]+$")
    sync_slug: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]*$")
    mart: str = Field(pattern=_IDENTIFIER, description="dbt model the sync reads.")
    primary_key: str = Field(pattern=_IDENTIFIER)
    mapped_columns: tuple[str, ...] = Field(min_length=1)
    owner: Owner
    after: tuple[str, ...] = Field(
        default=(), description="Keys of destinations whose sync must succeed before this one."
    )
    wave: int = Field(
        default=1, ge=1, description="Full-resync wave; wave 2 starts after wave 1 and a pause."
    )
    failure_policy: FailurePolicy = FailurePolicy()
    guards: Guards = Guards()

    @model_validator(mode="after")
    def _needs_a_sync_reference(self) -> Destination:
        if not self.sync_id and not self.sync_slug:
            raise ValueError("give sync_id or sync_slug (or both) to name the Hightouch sync")
        for column in self.mapped_columns:
            if not re.match(_IDENTIFIER, column):
                raise ValueError(f"mapped column {column!r} is not a plain lower-case identifier")
        for column in self.guards.required_columns:
            if column not in self.mapped_columns:
                raise ValueError(f"guards.required_columns names {column!r}, not a mapped column")
        return self

    @property
    def pool(self) -> str:
        """Dagster concurrency pool: two runs never sync the same destination at once."""
        return f"hightouch_{self.key}"

    @property
    def sync_reference(self) -> str:
        """How the sync is named in messages: its id when known, else its slug."""
        return self.sync_id or f"slug {self.sync_slug}"


class DestinationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    destinations: tuple[Destination, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _references_are_consistent(self) -> DestinationsFile:
        keys = [d.key for d in self.destinations]
        _refuse_duplicates("key", keys)
        _refuse_duplicates("sync_id", [d.sync_id for d in self.destinations if d.sync_id])
        _refuse_duplicates("sync_slug", [d.sync_slug for d in self.destinations if d.sync_slug])
        for destination in self.destinations:
            for upstream in destination.after:
                if upstream not in keys:
                    raise ValueError(
                        f"destination {destination.key!r}: after names unknown destination "
                        f"{upstream!r} (known: {', '.join(keys)})"
                    )
        _refuse_cycles({d.key: d.after for d in self.destinations})
        return self


def _refuse_duplicates(field: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{field} {value!r} is declared twice")
        seen.add(value)


def _refuse_cycles(after: dict[str, tuple[str, ...]]) -> None:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(key: str, path: list[str]) -> None:
        if key in done:
            return
        if key in visiting:
            raise ValueError(f"after forms a cycle: {' -> '.join([*path, key])}")
        visiting.add(key)
        for upstream in after[key]:
            visit(upstream, [*path, key])
        visiting.discard(key)
        done.add(key)

    for key in after:
        visit(key, [])


def _location(loc: tuple[int | str, ...], raw: object) -> str:
    """`destinations[1] (hubspot_contacts).primary_key` from a pydantic error location."""
    parts: list[str] = []
    node = raw
    for item in loc:
        if isinstance(item, int):
            name = (
                node[item].get("key")
                if isinstance(node, list) and isinstance(node[item], dict)
                else None
            )
            parts[-1] = f"{parts[-1]}[{item}]" + (f" ({name})" if name else "")
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def parse_destinations(path: Path) -> tuple[Destination, ...]:
    """Read and validate a declaration file; errors name the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as error:
        raise DestinationsFileError(
            f"{path}: destinations file not found (set ACTIVATION_DESTINATIONS_FILE to another)"
        ) from error
    except yaml.YAMLError as error:
        raise DestinationsFileError(f"{path}: not valid YAML: {error}") from error
    try:
        return DestinationsFile.model_validate(raw).destinations
    except ValidationError as error:
        problems = "; ".join(f"{_location(e['loc'], raw)}: {e['msg']}" for e in error.errors())
        raise DestinationsFileError(f"{path}: {problems}") from None


@cache
def load_destinations(path: Path | None = None) -> tuple[Destination, ...]:
    """The declaration in force (cached: it is read once per process)."""
    return parse_destinations(path or destinations_file())
