"""The map of the code location: every concern's definitions from `activation/defs/`, the
resources bound once, and the quality gate computed once from the assembled graph.

    defs/ingest      Airbyte connections as raw/* assets
    defs/transform   the dbt project: models as assets, tests as (blocking) checks
    defs/quality     guard checks, Python checks, the blocked-sync pager
    defs/activate    one Hightouch sync asset per destination (component), the activate job,
                     the per-run report
    defs/promotion   promote (staging -> sign-off -> production) and sign_off_decision
    defs/resync      full_resync (waves) and resync_destination
    defs/triggers    sensors that sync when upstream data lands

Loaded lazily through `@dg.definitions`: importing this module does no dbt parse and no HTTP.
"""

from pathlib import Path

import dagster as dg

from activation.core.gate import quality_gate_for
from activation.lib.destinations import load_destinations
from activation.resources import build_resources


def build_definitions() -> dg.Definitions:
    # Resources first: a missing setting fails loading with every missing variable named.
    resources = build_resources()
    location = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    # The gate map needs the whole graph, so it is computed here, once, and injected.
    gate = quality_gate_for(location, load_destinations())
    return dg.Definitions.merge(
        location, dg.Definitions(resources={**resources, "quality_gate": gate})
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
