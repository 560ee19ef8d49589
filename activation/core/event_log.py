"""Reading events back from Dagster's event log: an asset's records oldest first, a page at a time,
and the text of their metadata."""

from collections.abc import Callable, Iterator, Mapping

import dagster as dg

PAGE = 500


def metadata_text(metadata: Mapping[str, dg.MetadataValue], name: str) -> str:
    """The text of a stored event's metadata entry `name` ("" when absent or empty)."""
    found = metadata.get(name)
    return str(found.value) if found is not None and found.value is not None else ""


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
