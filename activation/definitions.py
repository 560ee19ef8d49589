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

Loaded lazily through `@dg.definitions`: importing this module does no dbt parse and no HTTP,
and imports nothing Dagster has not (the modules that import dagster-dbt are imported by
`build_definitions`), so that in a run worker the step forkserver starts before they load
(activation/core/step_forkserver.py).
"""

from pathlib import Path

import dagster as dg

from activation.core.executors import selected_executor
from activation.core.step_forkserver import (
    executes_a_run,
    freeze_loaded_heap,
    start_step_forkserver,
)


def build_definitions() -> dg.Definitions:
    # Imported here, not at module level: see the module docstring.
    from activation.core.executors import fan_out_executor
    from activation.core.gate import quality_gate_for
    from activation.lib.destinations import load_destinations
    from activation.resources import build_resources

    # Resources first: a missing setting fails loading with every missing variable named.
    resources = build_resources()
    location = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    # The gate map needs the whole graph, so it is computed here, once, and injected.
    gate = quality_gate_for(location, load_destinations())
    # Every job that names no executor of its own (the sensors' `build_after_upstream` and
    # `sync_on_mart_update`, the promote job, hand-launched asset selections) gets the one
    # `activate` uses: step processes forked from a forkserver that imported and built the code
    # location once per run. Dagster's default spawns each step as a fresh interpreter, which
    # imports Dagster and dbt and builds these definitions again (3-4 s per step).
    return dg.Definitions.merge(
        location,
        dg.Definitions(resources={**resources, "quality_gate": gate}, executor=fan_out_executor()),
    )


# Definitions built ahead: by the process step processes fork from (see `prebuild`), or by a
# process that executes a run, for every load Dagster makes in it.
_prebuilt: dg.Definitions | None = None


def prebuild() -> None:
    """Build the definitions, and their asset graph, once in the multiprocess executor's
    forkserver (activation/tooling/forkserver_preload.py), so every step process forked from it
    finds them built instead of building them again (a second or more per step); and once in a
    process that executes a run, for the several loads Dagster makes there.

    The forkserver starts with the run and has the run worker's environment, which is what each
    step would have read. A build that fails here leaves nothing prebuilt: each load then builds
    and reports the error itself, as it always did.
    """
    global _prebuilt
    try:
        definitions = build_definitions()
        definitions.get_repository_def()
    except Exception:  # noqa: BLE001 - see the docstring: the step reports it
        return
    _prebuilt = definitions


@dg.definitions
def defs() -> dg.Definitions:
    if _prebuilt is None and executes_a_run():
        # This process executes a run (activation/core/step_forkserver.py): start the forkserver
        # its steps fork from now, so that it loads beside this process rather than after it,
        # and build once for the several loads Dagster makes here; what is loaded stays to the
        # end of the run, so the garbage collector is told to leave it alone.
        if selected_executor() == "multiprocess":
            start_step_forkserver()
        prebuild()
        freeze_loaded_heap()
    return _prebuilt if _prebuilt is not None else build_definitions()
