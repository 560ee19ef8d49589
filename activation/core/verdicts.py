"""What the sync path decides before any trigger, as asset checks on the sync asset.

Every sync asset carries one asset check per pre-sync decision (`quality_gate`, and the schema
contract once declared). The sync path evaluates them before it sends anything to Hightouch:

- an asset step (the `activate` job, the sensor jobs, a hand launch) yields them as check results
  on the sync asset; when one refuses, the step ends without a materialization. A held-back sync
  is not a failure: the run shows the sync as not materialized and the check as failed, naming
  what refused;
- an op (promote, the resync jobs) logs the same evaluations on the sync asset and fails with
  `SyncHeldBack`, so the run's history says why production was not touched.

The checks are not `blocking` in Dagster's sense (that would fail the step): they block by
construction, since the trigger comes after them in the one sync path.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from activation.lib.destinations import Destination, sync_asset_key_for

GATE_CHECK = "quality_gate"
FAILED_ROWS_CHECK = "failed_rows"  # judged after the run, not before: see failed_rows_check_spec
BLOCKED_BY = "blocked_by"  # metadata: what refused, as the summaries name it


@dataclass(frozen=True)
class PreSyncVerdict:
    """One pre-sync decision on one destination's sync."""

    check_name: str
    passed: bool
    description: str
    """One sentence a data engineer reads in the UI: what was judged, and why it refused."""
    metadata: Mapping[str, dg.MetadataValue] = field(default_factory=dict)
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR
    refusing: tuple[str, ...] = ()
    """What refused, by name (checks, columns): the summaries say "blocked by <these>"."""
    record_on_success: Mapping[str, dg.MetadataValue] = field(default_factory=dict)
    """Metadata the sync's materialization carries when the sync ships (what the next sync's
    decision compares with)."""

    @property
    def blocks(self) -> bool:
        return not self.passed and self.severity == dg.AssetCheckSeverity.ERROR

    def _metadata(self) -> dict[str, dg.MetadataValue]:
        metadata = dict(self.metadata)
        if self.refusing:
            metadata[BLOCKED_BY] = dg.MetadataValue.text(", ".join(self.refusing))
        return metadata

    def check_result(self) -> dg.AssetCheckResult:
        """The result an asset step yields for its own check."""
        return dg.AssetCheckResult(
            check_name=self.check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=self._metadata(),
        )

    def evaluation(self, asset_key: dg.AssetKey) -> dg.AssetCheckEvaluation:
        """The same result as an event an op (or a sensor, outside a run) records."""
        return dg.AssetCheckEvaluation(
            asset_key=asset_key,
            check_name=self.check_name,
            passed=self.passed,
            severity=self.severity,
            description=self.description,
            metadata=self._metadata(),
        )


class SyncHeldBack(dg.Failure):
    """A pre-sync check refused: nothing was sent. Not retried (the data must change first)."""

    def __init__(
        self,
        destination: Destination,
        verdicts: list[PreSyncVerdict],
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.verdicts = verdicts
        refusing = [v for v in verdicts if v.blocks]
        super().__init__(
            description=" ".join(v.description for v in refusing)
            or f"Sync {destination.key} held back. Nothing was sent.",
            metadata={
                "destination": destination.key,
                BLOCKED_BY: ", ".join(name for v in refusing for name in v.refusing),
                **(metadata or {}),
            },
            allow_retries=False,
        )


def blocked_by(verdicts: list[PreSyncVerdict]) -> str:
    """ "blocked by a, b": the status line the summaries show for a held-back sync."""
    names = [name for v in verdicts if v.blocks for name in (v.refusing or (v.check_name,))]
    return "blocked by " + ", ".join(names)


def failed_rows_check_spec(destination: Destination) -> dg.AssetCheckSpec:
    """The `failed_rows` check every sync asset carries: the destination's failed-rows policy on
    the Hightouch run, judged when the run ends (by the step when it waits attached, by the
    detached-sync sensor otherwise). Not a pre-sync decision: it never holds a sync back."""
    policy = destination.failure_policy
    limits = [
        f"max_failed_rows={policy.max_failed_rows}" if policy.max_failed_rows is not None else "",
        f"max_failed_ratio={policy.max_failed_ratio}"
        if policy.max_failed_ratio is not None
        else "",
    ]
    declared = ", ".join(limit for limit in limits if limit) or "no limit declared: any failed row"
    return dg.AssetCheckSpec(
        FAILED_ROWS_CHECK,
        asset=sync_asset_key_for(destination.key),
        description=f"After the Hightouch run ends: the rows {destination.destination_type} "
        f"rejected stay within the failure_policy of destinations.yaml ({declared}); over it, "
        f"the check fails ({'and the sync fails' if policy.on_exceed == 'fail' else 'as a warning'}"
        "). Also fails when the run itself ended failed, cancelled or interrupted.",
    )
