"""The follower of detached syncs: `detached_sync_sensor` reports each Hightouch run a sync step
left in flight (a destination that waits detached, docs/detached-syncs.md) once it ends.

Every tick lists the in-flight runs from Dagster's event log once, reads each once with the
Hightouch client in one batched pass, and returns, for the runs that ended, the sync asset's
materialization and its `failed_rows` check evaluation as the step would have recorded them,
after paging the owner when the run failed or broke its failure policy
(`activation.core.detached.follow_in_flight`).

Request budget: a detached step ended, so its destination's share of the workspace limit (the
resource's `max_requests_per_second`, the workspace limit divided by the number of destinations)
is not spent by any step; the sensor spends the shares of the destinations it follows, over one
interval, and reads the rest next tick, the least recently read first (the cursor keeps when
each run was last read, and where each sync asset's marks are all reported, so a tick reads only
newer observations). The cursor only saves work: losing it, or replaying an old one, loses and
duplicates nothing.
"""

import json
import math
from collections.abc import Sequence

import dagster as dg

from activation.core.detached import follow_in_flight, list_in_flight
from activation.core.ledger_signature import LedgerSigner
from activation.lib.destinations import Destination, load_destinations
from activation.resources import HightouchResource, PagerDutyResource, SlackWebhookResource

DETACHED_SENSOR_NAME = "detached_sync_sensor"
DETACHED_SENSOR_INTERVAL_SECONDS = 10


def load_cursor(cursor: str | None) -> tuple[dict[str, float], dict[str, int]]:
    """`{"checked": {hightouch_run_id: epoch seconds of its last read},
    "after": {destination key: storage id up to which its detached marks are reported}}`."""
    if not cursor:
        return {}, {}
    try:
        value = json.loads(cursor)
        checked = {str(k): float(v) for k, v in value["checked"].items()}
        after = {str(k): int(v) for k, v in value.get("after", {}).items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise ValueError(
            f'{DETACHED_SENSOR_NAME} cursor must be {{"checked": {{...}}, "after": {{...}}}}: '
            f"{cursor!r}"
        ) from error
    return checked, after


def request_budget(share_per_second: float, destinations_followed: int) -> tuple[int | None, float]:
    """(reads this tick, requests per second) for the shares of `destinations_followed`; no
    limit when the resource sets none."""
    if share_per_second <= 0:
        return None, 0.0
    rate = share_per_second * max(1, destinations_followed)
    return max(1, math.floor(rate * DETACHED_SENSOR_INTERVAL_SECONDS)), rate


def build_detached_sync_sensor(destinations: Sequence[Destination]) -> dg.SensorDefinition:
    captured = tuple(destinations)

    @dg.sensor(
        name=DETACHED_SENSOR_NAME,
        minimum_interval_seconds=DETACHED_SENSOR_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Follows the Hightouch runs that detached sync steps left in flight: when "
        "one ends, reports its sync asset's materialization and failed_rows check, and pages "
        "the owner if it failed (docs/detached-syncs.md).",
    )
    def detached_sync_sensor(
        context: dg.SensorEvaluationContext,
        hightouch: HightouchResource,
        pagerduty: PagerDutyResource,
        slack: SlackWebhookResource,
    ) -> dg.SensorResult:
        checked, after = load_cursor(context.cursor)
        signer = LedgerSigner(hightouch.api_token)
        listing = list_in_flight(
            context.instance, captured, signer=signer, after=after, log=context.log
        )
        followed = len({r.destination.key for r in listing.pending})
        budget, rate = request_budget(hightouch.max_requests_per_second, followed)
        with hightouch.get_client(requests_per_second=rate) as client:
            result = follow_in_flight(
                context.instance,
                client,
                captured,
                signer=signer,
                listing=listing,
                max_requests=budget,
                checked=checked,
                pagerduty=pagerduty,
                slack=slack,
                log=context.log,
            )
        cursor = json.dumps({"checked": result.checked, "after": result.after}, sort_keys=True)
        if not result.events:
            note = f"{len(result.in_flight)} detached Hightouch run(s) in flight"
            if result.deferred:
                note += f", {result.deferred} not read this tick (request budget)"
            return dg.SensorResult(skip_reason=dg.SkipReason(note + "."), cursor=cursor)
        return dg.SensorResult(asset_events=result.events, cursor=cursor)

    return detached_sync_sensor


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[build_detached_sync_sensor(load_destinations())])
