"""The Airbyte connections the code location knows, listed by a command, not at load.

dagster-airbyte lists a workspace's connections and streams over HTTP when definitions load, so an
Airbyte outage would take the whole code location down (every job, the asset graph, promotion).
Instead `activation refresh` lists them once and stores the listing in the data folder
(`<ACTIVATION_DATA_DIR>/airbyte_listing.json`, or ACTIVATION_AIRBYTE_LISTING); loading reads it,
and every `raw/*` asset says when its listing was taken. Run `activation refresh` after adding a
connection or stream in Airbyte (a deployment bakes the listing into its image).

The listing is dagster-airbyte's own `AirbyteWorkspaceData`, serialized with Dagster's serdes, so
the assets come out exactly as dagster-airbyte would build them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from dagster_airbyte import AirbyteWorkspace

from activation.dagster_api import AirbyteWorkspaceData, fetch_airbyte_workspace_data
from activation.lib.paths import data_dir

LISTING_FILE_NAME = "airbyte_listing.json"
LISTING_FILE_VAR = "ACTIVATION_AIRBYTE_LISTING"  # another place, e.g. one baked into an image
REFRESHED_AT = "airbyte_listing_refreshed_at"


class AirbyteListingMissing(RuntimeError):
    """No stored listing: the message names the file and the command that writes it."""


@dataclass(frozen=True)
class AirbyteListing:
    workspace: AirbyteWorkspaceData
    refreshed_at: datetime
    path: Path

    def age_text(self, now: datetime | None = None) -> str:
        seconds = int(((now or datetime.now(UTC)) - self.refreshed_at).total_seconds())
        hours, rest = divmod(max(seconds, 0), 3600)
        return f"{hours} h {rest // 60} min" if hours else f"{rest // 60} min {rest % 60} s"


def listing_path() -> Path:
    configured = os.environ.get(LISTING_FILE_VAR, "").strip()
    return Path(configured) if configured else data_dir() / LISTING_FILE_NAME


def refresh_listing(workspace: AirbyteWorkspace, path: Path | None = None) -> AirbyteListing:
    """List the workspace's connections and streams over the Airbyte API and store them.
    Written to a temporary name and renamed, so a reader sees the old or the new listing."""
    path = path or listing_path()
    data = fetch_airbyte_workspace_data(workspace)
    refreshed_at = datetime.now(UTC)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(
        json.dumps(
            {"refreshed_at": refreshed_at.isoformat(), "workspace": dg.serialize_value(data)},
            indent=1,
        )
    )
    os.replace(partial, path)
    return AirbyteListing(data, refreshed_at, path)


def load_listing(path: Path | None = None) -> AirbyteListing:
    """The stored listing; raises `AirbyteListingMissing` naming the file and the fix."""
    path = path or listing_path()
    try:
        stored = json.loads(path.read_text())
        workspace = dg.deserialize_value(stored["workspace"], AirbyteWorkspaceData)
        refreshed_at = datetime.fromisoformat(stored["refreshed_at"])
    except FileNotFoundError:
        raise AirbyteListingMissing(
            f"{path}: no Airbyte listing. Run `activation refresh` (it lists the Airbyte "
            "connections once; the code location never calls Airbyte while it loads)."
        ) from None
    except (ValueError, KeyError, TypeError) as error:
        raise AirbyteListingMissing(
            f"{path}: the Airbyte listing is unreadable ({error}); run `activation refresh`"
        ) from None
    return AirbyteListing(workspace, refreshed_at, path)
