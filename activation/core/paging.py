"""Paging the owner: PagerDuty Events API v2 and a Slack message when a sync is blocked or fails.

Each page goes to the routing key of the destination's owner, read at run time from the
environment variable that destinations.yaml names (`owner.pagerduty_routing_key_env`), so one
team's incident never wakes another. A refused sync is one incident per destination and cause
(`activation/activate/<key>/gate_closed`, beside `.../sync_failed`) naming every refusing check;
a refusal by the same checks does not page again, and a `resolve` closes it after the destination
next syncs successfully.

Which pages are open is remembered in Dagster itself, as an `AssetObservation` on the sync asset
(`gate_open_pages`), so any later run of the sync (whatever launched it) can resolve them.

Notification calls are retried (`activation.lib.notify.post_json`). A page or message that cannot be
delivered is logged as an error and never changes the gate's decision.
"""

import hashlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import dagster as dg

from activation.lib.destinations import Destination, sync_asset_key_for
from activation.lib.notify import NotificationError
from activation.resources import PagerDutyResource

OPEN_PAGES = "gate_open_pages"  # observation metadata on the sync asset: JSON list of dedup keys
GATE_RUN = "gate_dagster_run_id"  # ... and the run whose gate decision it records
PAGED_CHECKS = "gate_paged_checks"  # ... and the refusing checks the open page names
_DEDUP_MAX = 255
_SUMMARY_MAX = 1024
_LOOKBACK = 100


# Where paging problems are reported: a step's or sensor's log, or a plain logger.
Log = logging.Logger | dg.DagsterLogManager


class PagingError(RuntimeError):
    """A page could not be sent (its routing key is missing); the message names the variable."""


def dedup_key(asset_key: dg.AssetKey, check_name: str) -> str:
    """One incident per asset and check; long dbt test names are shortened with a hash."""
    key = f"activation/{asset_key.to_user_string()}/{check_name}"
    if len(key) <= _DEDUP_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return key[: _DEDUP_MAX - 17] + "~" + digest


def routing_key(destination: Destination) -> str:
    variable = destination.owner.pagerduty_routing_key_env
    value = os.environ.get(variable, "").strip()
    if not value:
        raise PagingError(
            f"{variable} is not set: the PagerDuty routing key of team "
            f"{destination.owner.team} (owner of {destination.key}, see destinations.yaml)"
        )
    return value


def trigger_event(
    routing: str, key: str, summary: str, source: str, details: dict, severity: str = "error"
) -> dict:
    return {
        "routing_key": routing,
        "event_action": "trigger",
        "dedup_key": key,
        "payload": {
            "summary": summary[:_SUMMARY_MAX],
            "source": source,
            "severity": severity,
            "component": details.get("destination", "activation"),
            "group": "activation",
            "custom_details": details,
        },
    }


def resolve_event(routing: str, key: str) -> dict:
    return {"routing_key": routing, "event_action": "resolve", "dedup_key": key}


def _deliver(log: Log, pagerduty: PagerDutyResource, build, what: str) -> bool:
    """Send one event; on failure log loudly and return False (never raise)."""
    try:
        pagerduty.send(build())
        return True
    except (PagingError, NotificationError) as error:
        log.error(f"PAGING FAILED: {what} was not sent: {error}")
        return False


def page_owner(
    log: Log,
    pagerduty: PagerDutyResource,
    destination: Destination,
    *,
    key: str,
    summary: str,
    details: dict,
    severity: str = "error",
) -> bool:
    """Trigger (or update) the incident `key` at the destination owner's routing key."""
    return _deliver(
        log,
        pagerduty,
        lambda: trigger_event(
            routing_key(destination),
            key,
            summary,
            f"activation/{destination.key}",
            {"destination": destination.key, "team": destination.owner.team, **details},
            severity,
        ),
        f"page to {destination.owner.team} ({key})",
    )


def resolve_page(
    log: Log, pagerduty: PagerDutyResource, destination: Destination, key: str
) -> bool:
    return _deliver(
        log,
        pagerduty,
        lambda: resolve_event(routing_key(destination), key),
        f"resolve to {destination.owner.team} ({key})",
    )


def tell_slack(log: Log, slack: object | None, text: str) -> bool:
    """Post a plain message with the Slack resource; failures are logged, never raised."""
    if slack is None:
        log.error("SLACK NOT CONFIGURED: this message was not posted: " + text)
        return False
    try:
        slack.post({"text": text})  # type: ignore[attr-defined]
        return True
    except NotificationError as error:
        log.error(f"SLACK FAILED: message not posted: {error}")
        return False


def sync_failure_key(destination: Destination) -> str:
    """The one incident per destination for its failed syncs (resolved when it syncs again)."""
    return dedup_key(sync_asset_key_for(destination.key), "sync_failed")


def page_sync_failure(
    log: Log,
    pagerduty: PagerDutyResource,
    slack: object | None,
    destination: Destination,
    *,
    dagster_run_id: str,
    reason: str,
) -> bool:
    """Page only this destination's owner that its sync failed (and tell Slack unless `slack`
    is None, for callers that report to Slack themselves).

    The incident is keyed on the sync asset (`dedup_key(sync key, "sync_failed")`), so repeated
    failures update one incident and `resolve_page` with that key closes it. Returns whether the
    page was delivered. Never raises.
    """
    key = sync_failure_key(destination)
    summary = f"Hightouch sync {destination.key} failed (Dagster run {dagster_run_id}): {reason}"
    if slack is not None:
        tell_slack(log, slack, f"{destination.owner.slack_channel}: {summary}")
    return page_owner(
        log,
        pagerduty,
        destination,
        key=key,
        summary=summary,
        details={"dagster_run_id": dagster_run_id, "reason": reason},
    )


def gate_closed_key(destination: Destination) -> str:
    """The one incident per destination for its refused syncs (resolved when it syncs again)."""
    return dedup_key(sync_asset_key_for(destination.key), "gate_closed")


def gate_page_summary(destination: Destination, refusals: Sequence, run_id: str) -> str:
    """One line naming every refusing check, within PagerDuty's summary limit."""
    head = f"Sync {destination.key} refused by the quality gate (Dagster run {run_id}): "
    names = sorted({r.check_name for r in refusals})
    text = head + f"{len(names)} check(s): " + ", ".join(names)
    if len(text) <= _SUMMARY_MAX:
        return text
    more = " ... (all in custom_details.refused_checks)"
    return text[: _SUMMARY_MAX - len(more)] + more


@dataclass(frozen=True)
class GatePager:
    """One page per refused sync: triggered when the set of refusing checks is new, resolved
    after the destination next syncs successfully.

    Works from the sync step (`from_step`) and from the sensor that pages for syncs a run never
    started because a blocking check failed in it
    (`activation.core.gate.build_blocked_sync_sensor`).
    """

    instance: dg.DagsterInstance
    log: Any
    destination: Destination
    _: KW_ONLY
    sync_key: dg.AssetKey
    run_id: str
    record: Callable[[dg.AssetObservation], None]
    """Where the open pages are written: the step's `log_event`, or a runless report."""
    pagerduty: PagerDutyResource | None
    slack: object | None

    @classmethod
    def from_step(
        cls,
        context: dg.AssetExecutionContext | dg.OpExecutionContext,
        destination: Destination,
        *,
        pagerduty: PagerDutyResource | None,
        slack: object | None,
    ) -> "GatePager":
        return cls(
            context.instance,
            context.log,
            destination,
            sync_key=sync_asset_key_for(destination.key),
            run_id=context.run.run_id,
            record=context.log_event,
            pagerduty=pagerduty,
            slack=slack,
        )

    def _gate_records(self) -> Iterator[dict[str, Any]]:
        """Metadata of this sync's recent gate decisions, newest first."""
        result = self.instance.fetch_observations(self.sync_key, limit=_LOOKBACK)
        for record in result.records:
            observation = record.event_log_entry.asset_observation
            if observation is not None and GATE_RUN in observation.metadata:
                yield {name: value.value for name, value in observation.metadata.items()}

    def _latest(self) -> dict[str, Any]:
        return next(self._gate_records(), {})

    def open_pages(self) -> list[str]:
        """Dedup keys this sync's gate paged and has not resolved yet (newest record wins).
        Keys of the per-check pages of earlier releases are resolved with the rest."""
        return list(self._latest().get(OPEN_PAGES, []))

    def paged_checks(self) -> list[str]:
        """The refusing checks the open gate page names (empty when none is open)."""
        latest = self._latest()
        if gate_closed_key(self.destination) not in latest.get(OPEN_PAGES, []):
            return []
        return list(latest.get(PAGED_CHECKS, []))

    def decided_in(self, run_id: str) -> bool:
        """Whether a gate decision of `run_id` was already recorded for this sync."""
        return any(metadata[GATE_RUN] == run_id for metadata in self._gate_records())

    def _remember(
        self, keys: Sequence[str], paged: Sequence[str], refused: Sequence[dict] = ()
    ) -> None:
        metadata: dict[str, Any] = {
            OPEN_PAGES: dg.MetadataValue.json(sorted(keys)),
            PAGED_CHECKS: dg.MetadataValue.json(sorted(paged)),
            GATE_RUN: self.run_id,
        }
        if refused:
            metadata["gate_refused_checks"] = dg.MetadataValue.json(list(refused))
        self.record(dg.AssetObservation(asset_key=self.sync_key, metadata=metadata))

    def page_refusals(self, refusals: Sequence) -> None:
        """Page the owner once for this refused sync, naming every refusing check, unless the
        open page already names exactly these checks. The decision is recorded either way, so
        the sensor does not page again for a run whose sync step paged."""
        log = self.log
        if not refusals:
            return
        key = gate_closed_key(self.destination)
        before = self.open_pages()
        already = self.paged_checks()
        names = sorted({r.check_name for r in refusals})
        refused = [
            {"check": r.check_name, "result": r.result, "run_id": r.run_id} for r in refusals
        ]
        if names == already:
            log.info(
                f"Gate page {key} already names these {len(names)} refusing check(s); "
                "not paging again."
            )
            self._remember(before, already, refused)
            return
        if self.pagerduty is None:
            log.error(
                "PAGING NOT CONFIGURED: the sync asset was given no PagerDuty resource, so "
                f"{len(names)} refusing check(s) page nobody."
            )
            self._remember(before, already, refused)
            return
        delivered = page_owner(
            log,
            self.pagerduty,
            self.destination,
            key=key,
            summary=gate_page_summary(self.destination, refusals, self.run_id),
            details={
                "cause": "gate_closed",
                "refused_checks": refused,
                "blocked_dagster_run_id": self.run_id,
            },
        )
        tell_slack(
            log,
            self.slack,
            f"{self.destination.owner.slack_channel}: sync {self.destination.key} was blocked "
            f"by the quality gate (Dagster run {self.run_id}); nothing was sent:\n"
            + "\n".join(f"- {r.sentence()}" for r in refusals),
        )
        if delivered:
            self._remember(sorted({*before, key}), names, refused)
        else:  # the next refusal tries again
            self._remember(before, already, refused)

    def resolve(self) -> None:
        """Resolve every open gate page of this sync (call after a successful sync)."""
        before = self.open_pages()
        if not before:
            return
        if self.pagerduty is None:
            self.log.error(
                f"PAGING NOT CONFIGURED: gate pages {before} stay open (no PagerDuty resource)."
            )
            return
        still_open = [
            key
            for key in before
            if not resolve_page(self.log, self.pagerduty, self.destination, key)
        ]
        self._remember(still_open, self.paged_checks() if still_open else [])
        self.log.info(
            f"Sync {self.destination.key} succeeded: resolved gate pages "
            f"{sorted(set(before) - set(still_open))}"
        )
