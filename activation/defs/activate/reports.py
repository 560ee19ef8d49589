"""The per-run summary: the `activate/activation_report` asset and the two run-status sensors
that write it after every run that synced, whether it succeeded or failed (see
activation/core/run_summary.py for why a sensor and not an in-run asset)."""

from collections.abc import Sequence

import dagster as dg

from activation.core.run_summary import REPORT_KEY, report_run
from activation.lib.destinations import Destination, load_destinations, sync_asset_key_for
from activation.resources import PagerDutyResource, QualityGate, SlackWebhookResource


def build_report_spec(destinations: Sequence[Destination]) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=REPORT_KEY,
        deps=[sync_asset_key_for(d.key) for d in destinations],
        group_name="activate",
        kinds={"slack"},
        owners=["team:data-platform"],
        description="One summary per run that synced: each destination's status, row counts "
        "and Hightouch run id. Written by the activation_summary sensors after the run ends, "
        "whether it succeeded or failed.",
    )


def build_summary_sensors(destinations: Sequence[Destination]) -> list[dg.SensorDefinition]:
    captured = tuple(destinations)

    def evaluate(
        context: dg.RunStatusSensorContext,
        slack: SlackWebhookResource,
        pagerduty: PagerDutyResource,
        gate: QualityGate,
    ) -> None:
        report_run(
            context.instance,
            context.dagster_run.run_id,
            captured,
            slack=slack,
            pagerduty=pagerduty,
            log=context.log,
            gate=gate,
        )

    @dg.run_status_sensor(
        name="activation_summary_on_success",
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="Posts the per-destination summary of every successful run that synced.",
    )
    def on_success(
        context: dg.RunStatusSensorContext,
        slack: SlackWebhookResource,
        pagerduty: PagerDutyResource,
        quality_gate: dg.ResourceParam[QualityGate],
    ) -> None:
        evaluate(context, slack, pagerduty, quality_gate)

    @dg.run_status_sensor(
        name="activation_summary_on_failure",
        run_status=dg.DagsterRunStatus.FAILURE,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=5,
        description="Posts the per-destination summary of every failed run that synced and "
        "pages the owners of the destinations that failed.",
    )
    def on_failure(
        context: dg.RunStatusSensorContext,
        slack: SlackWebhookResource,
        pagerduty: PagerDutyResource,
        quality_gate: dg.ResourceParam[QualityGate],
    ) -> None:
        evaluate(context, slack, pagerduty, quality_gate)

    return [on_success, on_failure]


@dg.definitions
def defs() -> dg.Definitions:
    destinations = load_destinations()
    return dg.Definitions(
        assets=[build_report_spec(destinations)], sensors=build_summary_sensors(destinations)
    )
