"""Reading an asset's events from Dagster's event log, oldest first, a page at a time."""

from collections.abc import Callable, Iterator

import dagster as dg

PAGE = 500

Fetch = Callable[..., dg.EventRecordsResult]
"""`DagsterInstance.fetch_materializations` or `DagsterInstance.fetch_observations`."""


def records_after(
    fetch: Fetch, key: dg.AssetKey, after: int | None, page: int = PAGE
) -> Iterator[dg.EventLogRecord]:
    """Every record `fetch` holds for `key` with a storage id above `after` (all when None),
    oldest first; each page is read only when the previous one is used up."""
    while True:
        result = fetch(
            dg.AssetRecordsFilter(asset_key=key, after_storage_id=after),
            limit=page,
            ascending=True,
        )
        yield from result.records
        if not result.has_more or not result.records:
            return
        after = result.records[-1].storage_id
