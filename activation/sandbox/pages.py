"""Read-only HTML pages of the Hightouch stand-in's "app": what a `hightouch_run_url` opens.

The client links each run as `<app_url>/syncs/<sync id>/runs/<run id>`; in the sandbox the app URL
is `<sandbox>/hightouch/app` (`activation.lib.environment`). These pages show a sync (its mart,
destination and runs, newest first) and a run (status, timestamps, row counts, error and the first
rows the CRM stand-in accepted from it), read from the sync engine's run records. GET only, no
scripts, every value HTML-escaped; an unknown sync or run is a 404 page saying which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from activation.sandbox.sync_engine import (
    DELIVERED_SAMPLE_ROWS,
    RowCounts,
    Run,
    SyncEngine,
    iso_timestamp,
)

if TYPE_CHECKING:
    from activation.sandbox.hightouch import SyncDefinition

APP_PREFIX = "/hightouch/app"
"""Where the sandbox serves the app pages; `Endpoints.hightouch_app_url` is `<sandbox>` + this."""

_STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}"
    "th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}"
    "th{background:#f3f3f3}.error{color:#a00;white-space:pre-wrap}"
)


def _text(value: object) -> str:
    """A value as escaped HTML text; None is an em dash."""
    return "\u2014" if value is None else escape(str(value))


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}\n</body>\n</html>\n"
    )


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A table; header labels are escaped here, cells must be HTML already."""
    head = "".join(f"<th>{escape(label)}</th>" for label in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>{body}</tbody>\n</table>"


def _facts(pairs: Sequence[tuple[str, str]]) -> str:
    """A two-column table of label -> HTML value."""
    rows = "".join(f"<tr><th>{escape(label)}</th><td>{value}</td></tr>" for label, value in pairs)
    return f"<table>\n<tbody>{rows}</tbody>\n</table>"


def sync_path(sync_id: str) -> str:
    return f"{APP_PREFIX}/syncs/{sync_id}"


def run_path(sync_id: str, run_id: str) -> str:
    return f"{sync_path(sync_id)}/runs/{run_id}"


def _link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def _sync_facts(sync: SyncDefinition) -> list[tuple[str, str]]:
    d = sync.destination
    return [
        ("Sync", _link(sync_path(sync.id), sync.id)),
        ("Slug", _text(sync.slug)),
        ("Destination", _text(f"{d.destination_type} {d.object}")),
        ("Mart", _text(d.mart)),
        ("Primary key", _text(d.primary_key)),
        ("Mapped fields", _text(", ".join(d.mapped_columns))),
    ]


def render_sync_page(sync: SyncDefinition, runs: Sequence[Run]) -> str:
    """The sync and its runs, newest first, each linking to its run page."""
    newest_first = sorted(runs, key=lambda run: int(run.id), reverse=True)
    rows = [
        [
            _link(run_path(sync.id, run.id), run.id),
            _text(run.status),
            _text(iso_timestamp(run.created_at)),
            _text(iso_timestamp(run.finished_at)),
            _text(run.successful.total),
            _text(run.failed.total),
        ]
        for run in newest_first
    ]
    runs_html = (
        _table(["Run", "Status", "Created", "Finished", "Successful rows", "Failed rows"], rows)
        if rows
        else "<p>No runs yet.</p>"
    )
    body = (
        f"<h1>Hightouch sync {_text(sync.id)} ({_text(sync.slug)})</h1>\n"
        f"{_facts(_sync_facts(sync))}\n<h2>Runs ({len(rows)})</h2>\n{runs_html}"
    )
    return _page(f"Sync {sync.id} ({sync.slug})", body)


def _count_rows(run: Run) -> list[list[str]]:
    def row(label: str, counts: RowCounts) -> list[str]:
        values = (counts.added, counts.changed, counts.removed, counts.total)
        return [escape(label), *(_text(v) for v in values)]

    return [
        row("Planned", run.planned),
        row("Successful", run.successful),
        row("Failed", run.failed),
    ]


def _field_value(value: Any) -> str:
    return _text("" if value is None else value)


def render_run_page(sync: SyncDefinition, run: Run) -> str:
    """One run: its state, counts, error and the first rows the CRM accepted from it."""
    d = sync.destination
    facts = [
        *_sync_facts(sync),
        ("Run", _text(run.id)),
        ("Status", _text(run.status)),
        ("Created", _text(iso_timestamp(run.created_at))),
        ("Started", _text(iso_timestamp(run.started_at))),
        ("Finished", _text(iso_timestamp(run.finished_at))),
        ("Full resync", _text("yes" if run.full_resync else "no")),
        ("Query size", _text(run.query_size)),
        ("Completion", _text(f"{run.completion_ratio:.0%}")),
    ]
    error = (
        f'<h2>Error</h2>\n<p class="error">{_text(run.error)}</p>\n'
        if run.error
        else "<h2>Error</h2>\n<p>None.</p>\n"
    )
    delivered_total = run.successful.total
    shown = run.delivered[:DELIVERED_SAMPLE_ROWS]
    delivered_rows = [
        [
            _text(row.operation),
            _text(row.id),
            *(_field_value(row.fields.get(c)) for c in d.mapped_columns),
        ]
        for row in shown
    ]
    delivered = (
        f"<p>{len(shown)} of {delivered_total} rows delivered to {_text(d.destination_type)} "
        f"{_text(d.object)} by this run (the first {DELIVERED_SAMPLE_ROWS} at most).</p>\n"
        + _table(["Operation", d.primary_key, *d.mapped_columns], delivered_rows)
        if shown
        else f"<p>No rows were delivered by this run ({delivered_total} in total).</p>"
    )
    body = (
        f"<h1>Hightouch run {_text(run.id)} of sync {_text(sync.id)} ({_text(sync.slug)})</h1>\n"
        f"<p>{_link(sync_path(sync.id), 'All runs of this sync')}</p>\n"
        f"{_facts(facts)}\n<h2>Rows</h2>\n"
        f"{_table(['', 'Added', 'Changed', 'Removed', 'Total'], _count_rows(run))}\n"
        f"{error}<h2>Delivered rows</h2>\n{delivered}"
    )
    return _page(f"Run {run.id} of sync {sync.id}", body)


def render_not_found(message: str) -> str:
    body = f"<h1>Not found</h1>\n<p>{_text(message)}</p>"
    return _page("Not found", body)


def routes(syncs: Mapping[str, SyncDefinition], engine: SyncEngine) -> list[BaseRoute]:
    """`GET /hightouch/app/syncs/{sync_id}` and `.../runs/{run_id}`: HTML, no auth (a browser
    opens them from the run links), read-only."""

    def not_found(message: str) -> HTMLResponse:
        return HTMLResponse(render_not_found(message), status_code=404)

    async def sync_page(request: Request) -> HTMLResponse:
        sync_id = request.path_params["sync_id"]
        sync = syncs.get(sync_id)
        if sync is None:
            return not_found(f"Sync {sync_id} not found.")
        return HTMLResponse(render_sync_page(sync, engine.run_records(sync.id)))

    async def run_page(request: Request) -> HTMLResponse:
        sync_id, run_id = request.path_params["sync_id"], request.path_params["run_id"]
        sync = syncs.get(sync_id)
        if sync is None:
            return not_found(f"Sync {sync_id} not found.")
        run = next((r for r in engine.run_records(sync.id) if r.id == run_id), None)
        if run is None:
            return not_found(f"Run {run_id} of sync {sync_id} not found.")
        return HTMLResponse(render_run_page(sync, run))

    return [
        Route(sync_path("{sync_id}"), sync_page, methods=["GET"]),
        Route(run_path("{sync_id}", "{run_id}"), run_page, methods=["GET"]),
    ]
