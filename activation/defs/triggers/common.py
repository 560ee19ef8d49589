"""What the trigger sensors share: the jobs' names, the tag that says which trigger launched a
run, the syncs reading each mart, and a cursor reader that never silently resets."""

import json
from collections.abc import Sequence

import dagster as dg

from activation.lib.destinations import Destination, mart_asset_key, sync_asset_key_for

SYNC_JOB_NAME = "sync_on_mart_update"
BUILD_JOB_NAME = "build_after_upstream"
TRIGGER_TAG = "activation/trigger"
BUILD_SELECTION = dg.AssetSelection.groups("transform", "activate")
"""What `build_after_upstream` may build: the dbt models (their tests as checks) and the syncs. A
run of it may be scoped to part of this (`RunRequest.asset_selection`)."""


def syncs_by_mart(destinations: Sequence[Destination]) -> dict[dg.AssetKey, list[dg.AssetKey]]:
    """Mart asset key -> the sync asset keys of the destinations that read it."""
    marts: dict[dg.AssetKey, list[dg.AssetKey]] = {}
    for destination in destinations:
        marts.setdefault(mart_asset_key(destination.mart), []).append(
            sync_asset_key_for(destination.key)
        )
    return marts


def json_object_cursor(cursor: str | None, sensor: str) -> dict:
    """A sensor's JSON-object cursor (`{}` before the first tick); an unreadable cursor is an
    error naming the sensor, never a silent reset that would replay or drop events."""
    if not cursor:
        return {}
    try:
        value = json.loads(cursor)
    except json.JSONDecodeError as error:
        raise ValueError(f"{sensor} cursor is not JSON: {cursor!r}") from error
    if not isinstance(value, dict):
        raise ValueError(f"{sensor} cursor must be an object: {cursor!r}")
    return value
