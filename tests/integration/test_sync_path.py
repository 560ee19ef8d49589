"""One guarded path to Hightouch: every job of the code location that can reach Hightouch does so
through `activation.core.sync_path.sync_destination`, and nothing else triggers a sync.

Three proofs, from the weakest to the strongest:
- the source: only activation/core/sync_path.py calls a client's `trigger`;
- the definitions: every node of every job that needs the `hightouch` resource holds its
  destination's pool and its compute function calls `sync_destination`;
- real runs on an instance where no check ever ran (the gate is closed for every destination):
  every job launched the way an operator can launch it ends with zero triggers counted at the
  Hightouch stand-in, and every sync step it ran says the gate refused it.
"""

from __future__ import annotations

import ast
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import pytest

from activation.lib.destinations import Destination, load_destinations, sync_asset_key_for
from activation.sandbox.launcher import SandboxProcess
from tests.support.gate_support import chain_sandbox

PACKAGE = Path(__file__).resolve().parents[2] / "activation"
GATE_REFUSAL = "refused to trigger Hightouch"


def test_only_the_sync_path_calls_the_clients_trigger() -> None:
    callers = []
    for path in PACKAGE.rglob("*.py"):
        if "sandbox" in path.relative_to(PACKAGE).parts:
            continue  # the stand-ins serve the API; they never call it
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "trigger"
            ):
                callers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert [c.split(":")[0] for c in callers] == ["core/sync_path.py"], callers


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    with chain_sandbox(tmp_path_factory.mktemp("sync_path") / "data") as box:
        yield box


@pytest.fixture(scope="module")
def definitions(sandbox: SandboxProcess) -> dg.Definitions:
    from activation.definitions import build_definitions

    return build_definitions()


def hightouch_nodes(job: dg.JobDefinition) -> list[Any]:
    return [n for n in job.nodes if "hightouch" in n.definition.required_resource_keys]


def test_every_node_that_reaches_hightouch_holds_its_pool_and_calls_the_sync_path(
    definitions: dg.Definitions,
) -> None:
    from activation.defs.resync.shared import sync_in_op

    # The resync ops go through one shared helper; it must itself take the path.
    assert "sync_destination" in sync_in_op.__code__.co_names
    takes_the_path = {"sync_destination", "sync_in_op"}
    pools = {d.pool for d in load_destinations()}
    seen = 0
    for job in definitions.resolve_all_job_defs():
        for node in hightouch_nodes(job):
            op = node.definition
            assert op.pool in pools, f"{job.name}/{node.name} holds pool {op.pool!r}"
            code = op.compute_fn.decorated_fn.__code__
            assert takes_the_path & set(code.co_names), f"{job.name}/{node.name} bypasses it"
            seen += 1
    assert seen >= 4 * len(load_destinations())  # activate, both resyncs, promote (x2)


def _sync_keys() -> list[dg.AssetKey]:
    from activation.lib.destinations import sync_asset_key_for

    return [sync_asset_key_for(d.key) for d in load_destinations()]


ALL = frozenset(d.key for d in load_destinations())
CONTACTS = "salesforce_contacts"
# Declared `after` another: when that one is refused, these are skipped by design, not attacked.
DEPENDENTS = frozenset(d.key for d in load_destinations() if d.after)
Launched = list[tuple[Any, frozenset[str]]]  # (run result, destinations it must have refused)


def _asset_launch(job: dg.JobDefinition, instance: dg.DagsterInstance) -> Launched:
    result = job.execute_in_process(
        instance=instance, asset_selection=_sync_keys(), raise_on_error=False
    )
    return [(result, ALL - DEPENDENTS)]


def _resync_launch(job: dg.JobDefinition, instance: dg.DagsterInstance) -> Launched:
    config = {
        "destinations": [],
        "pause_seconds": 0,
        "reason": "attack: a full resync on an unchecked warehouse",
        "requested_by": "test",
    }
    result = job.execute_in_process(
        instance=instance,
        run_config=config,  # the job's run config is its form
        raise_on_error=False,
    )
    return [(result, ALL - DEPENDENTS)]


def _one_off_launch(job: dg.JobDefinition, instance: dg.DagsterInstance) -> Launched:
    launched = []
    for key in sorted(ALL):
        form = {"destination": key, "reason": "attack", "requested_by": "test"}
        result = job.execute_in_process(
            instance=instance,
            run_config=form,
            raise_on_error=False,
        )
        launched.append((result, frozenset({key})))
    return launched


def _promote_launch(job: dg.JobDefinition, instance: dg.DagsterInstance) -> Launched:
    promotable: list[Destination] = [d for d in load_destinations() if d.staging]
    return [
        (
            job.execute_in_process(
                instance=instance,
                run_config={"destination": d.key, "approval_timeout_seconds": 1.0},
                raise_on_error=False,
            ),
            frozenset({d.key}),
        )
        for d in promotable
    ]


def _synced(result: dg.ExecuteInProcessResult) -> list[str]:
    """The sync assets the run materialized (a held-back sync materializes nothing)."""
    return sorted(
        event.asset_key.to_user_string()
        for event in result.get_asset_materialization_events()
        if event.asset_key is not None and event.asset_key.path[0] == "activate"
    )


# How an operator launches each job that can reach Hightouch. A new job that needs the
# `hightouch` resource fails the test below until it is listed here, so its guard is attacked too.
LAUNCHES: dict[str, Callable[[dg.JobDefinition, dg.DagsterInstance], Launched]] = {
    "activate": _asset_launch,
    "__ASSET_JOB": _asset_launch,
    "build_after_upstream": _asset_launch,
    "sync_on_mart_update": _asset_launch,
    "full_resync": _resync_launch,
    "resync_destination": _one_off_launch,
    "promote": _promote_launch,
}


def test_every_job_is_refused_by_a_closed_gate_with_no_trigger(
    definitions: dg.Definitions, sandbox: SandboxProcess
) -> None:
    jobs = [j for j in definitions.resolve_all_job_defs() if hightouch_nodes(j)]
    assert sorted(j.name for j in jobs) == sorted(LAUNCHES), "list every job that syncs"
    with dg.instance_for_test() as instance:  # no check of this location has ever run here
        for job in jobs:
            for result, targeted in LAUNCHES[job.name](job, instance):
                # Held back is not failed: an asset step ends without a materialization.
                shipped = _synced(result)
                assert not shipped, f"{job.name} synced {shipped} on an unchecked warehouse"
                steps = {n.name for n in hightouch_nodes(job)}
                refused = {
                    entry.step_key.rsplit("__", 1)[-1]
                    for entry in instance.all_logs(result.run_id)
                    if entry.step_key in steps and GATE_REFUSAL in (entry.user_message or "")
                }
                assert refused == targeted, f"{job.name}: gate refused {sorted(refused)}"
    assert sandbox.trigger_counts() == {}


def test_the_gate_map_cannot_be_emptied_from_run_config(
    definitions: dg.Definitions, sandbox: SandboxProcess
) -> None:
    """An operator with Launchpad access tries to open every gate by overriding the gate's map
    in run config (no blocking check for any destination). The map has no config to override:
    every sync is still refused by the checks it really depends on, and nothing is sent."""
    job = definitions.resolve_job_def("activate")
    emptied = {"blocking_checks": {key: {} for key in ALL}, "job_names": ["activate"]}
    attack = {"resources": {"quality_gate": {"config": emptied}}}
    with dg.instance_for_test() as instance:
        try:
            result = job.execute_in_process(
                instance=instance,
                asset_selection=_sync_keys(),
                run_config=attack,
                raise_on_error=False,
            )
        except dg.DagsterInvalidConfigError:
            result = None  # refused before the run existed: as good
        if result is not None:
            assert not _synced(result)
            refused = {
                entry.step_key.rsplit("__", 1)[-1]
                for entry in instance.all_logs(result.run_id)
                if entry.step_key and GATE_REFUSAL in (entry.user_message or "")
            }
            assert refused == ALL - DEPENDENTS
    assert sandbox.trigger_counts() == {}


class _Listener(http.server.BaseHTTPRequestHandler):
    """An address an intruder controls: it records every request and what it carried."""

    seen: ClassVar[list[str]] = []

    def _record(self) -> None:
        type(self).seen.append(f"{self.command} {self.path} {self.headers.get('Authorization')}")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST = _record

    def log_message(self, *args: object) -> None:
        pass


def test_run_config_cannot_send_the_token_or_the_pages_elsewhere(
    definitions: dg.Definitions, sandbox: SandboxProcess
) -> None:
    """An operator with Launchpad access points the Hightouch resource (and the pager) at an
    address of their own in run config. The sync path refuses before any request: the listener
    receives nothing, so the API token never leaves for it, and nothing is triggered."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Listener)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    elsewhere = f"http://127.0.0.1:{server.server_address[1]}"
    job = definitions.resolve_job_def("activate")
    attacks = {
        # The token itself stays out of the run config: Dagster reads it from the environment.
        "resources.hightouch.config.api_base_url": {
            "hightouch": {"api_base_url": elsewhere, "api_token": {"env": "HIGHTOUCH_API_TOKEN"}}
        },
        "resources.pagerduty.config.events_url": {"pagerduty": {"events_url": elsewhere}},
    }
    try:
        with dg.instance_for_test() as instance:
            for field, override in attacks.items():
                run_config = {
                    "resources": {name: {"config": cfg} for name, cfg in override.items()}
                }
                result = job.execute_in_process(
                    instance=instance,
                    asset_selection=[sync_asset_key_for(CONTACTS)],
                    run_config=run_config,
                    raise_on_error=False,
                )
                assert not _synced(result)
                failures = [
                    e.step_failure_data.user_failure_data.description or ""
                    for e in result.all_events
                    if e.is_step_failure and e.step_failure_data.user_failure_data
                ]
                assert any(f"overrides {field}" in text for text in failures), failures
    finally:
        server.shutdown()
    assert _Listener.seen == []
    assert sandbox.trigger_counts() == {}
