"""The resync forms refuse a mistake before the run exists, and start only what they select.

`full_resync` and `resync_destination` take their Launchpad form through a config mapping that
checks it: a bad form fails `execute_in_process` and a Launchpad launch with a
`DagsterInvalidConfigError` naming the field and its valid values, and the instance holds no run
afterwards. A good form launches; the ops of destinations it does not select are skipped (no
STEP_START, so no pool slot taken). Real Dagster, the sandbox over HTTP, the real code location
(and, for the Launchpad, its gRPC code server with the webserver's GraphQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from activation.lib.destinations import load_destinations
from activation.tooling.demo import run_chain
from tests.support.chain_support import SandboxChain, sandbox_chain
from tests.support.gate_support import ROUTING_KEYS

TOKEN = "resync-forms-token-3f9c21"
KEYS = [d.key for d in load_destinations()]
VALID_KEYS = "valid: " + ", ".join(KEYS)
DEFINITIONS_FILE = Path(__file__).resolve().parents[2] / "activation" / "definitions.py"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxChain]:
    """The sandbox and an instance where the chain ran once (every gate open)."""
    env = {"HIGHTOUCH_API_TOKEN": TOKEN, "ACTIVATION_SYNC_RETRY_DELAY_SECONDS": "0.1"}
    with sandbox_chain(tmp_path_factory, "resync_forms", {**env, **ROUTING_KEYS}) as setup:
        first = run_chain(setup.instance, "CRITICAL")
        assert first.success, first.failed_steps
        yield setup


@pytest.fixture(scope="module")
def definitions(chain: SandboxChain) -> dg.Definitions:
    from activation.definitions import build_definitions

    return build_definitions()


def _refused(definitions: dg.Definitions, job_name: str, form: dict) -> str:
    """Launch `job_name` with `form` on an empty instance; assert it was refused before any run
    existed, and return the message."""
    job = definitions.resolve_job_def(job_name)
    with dg.instance_for_test() as instance:
        with pytest.raises(dg.DagsterInvalidConfigError) as refused:
            job.execute_in_process(instance=instance, run_config=form, raise_on_error=False)
        assert instance.get_runs() == []
    return str(refused.value)


GOOD_WAVES = {"reason": "schema change in the marts", "requested_by": "ops@data"}


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (
            {"destinations": ["hubspot_contact"]},
            f"destinations: 'hubspot_contact' is not a declared destination; {VALID_KEYS}",
        ),
        (
            {"wave_overrides": {"hubspot_contact": 2}},
            "wave_overrides.hubspot_contact: 'hubspot_contact' is not a declared destination; "
            + VALID_KEYS,
        ),
        (
            {"wave_overrides": {"braze_users": 7}},
            "wave_overrides.braze_users: 7 is not a declared wave; valid: 1, 2",
        ),
        (
            {"wave_overrides": {"salesforce_contacts": 1}},
            "wave_overrides.salesforce_contacts: salesforce_contacts (wave 1) is declared after "
            "salesforce_accounts (wave 1) and must run in a later wave; valid: 2",
        ),
        (
            {"wave_overrides": {"salesforce_accounts": 2}},
            "wave_overrides.salesforce_accounts: salesforce_contacts (wave 2) is declared after "
            "salesforce_accounts (wave 2) and must run in a later wave; valid: 1",
        ),
        (
            {"destinations": ["braze_users"], "wave_overrides": {"hubspot_contacts": 1}},
            "wave_overrides.hubspot_contacts: hubspot_contacts does not take part in this run "
            "(destinations); valid: braze_users",
        ),
        ({"reason": "  "}, "reason: must not be empty"),
        ({"requested_by": ""}, "requested_by: must not be empty"),
        ({"pause_seconds": -1}, "pause_seconds: -1 is negative; valid: 0 or more"),
        ({"pause_seconds": None}, "pause_seconds: Input should be a valid number"),
    ],
    ids=[
        "unknown-destination",
        "override-of-unknown-destination",
        "undeclared-wave",
        "override-into-its-upstreams-wave",
        "upstream-moved-into-its-dependents-wave",
        "override-of-unselected-destination",
        "blank-reason",
        "blank-requested_by",
        "negative-pause",
        "emptied-pause",  # `pause_seconds:` left empty in the Launchpad's YAML arrives as null
    ],
)
def test_a_bad_full_resync_form_is_refused_before_the_run_exists(
    definitions: dg.Definitions, chain: SandboxChain, form: dict, expected: str
) -> None:
    before = chain.sandbox.trigger_counts()
    message = _refused(definitions, "full_resync", {**GOOD_WAVES, "pause_seconds": 0, **form})
    assert expected in message
    assert message.startswith("The full_resync form is invalid")
    assert chain.sandbox.trigger_counts() == before


def test_every_mistake_of_a_full_resync_form_is_named_at_once(definitions: dg.Definitions) -> None:
    message = _refused(
        definitions,
        "full_resync",
        {"reason": "", "requested_by": "ops", "wave_overrides": {"hubspot_contact": 2}},
    )
    assert "reason: must not be empty" in message
    assert "wave_overrides.hubspot_contact" in message


@pytest.mark.parametrize(
    ("job_name", "form"),
    [
        ("full_resync", {"requested_by": "ops"}),
        ("resync_destination", {"destination": "braze_users", "requested_by": "ops"}),
    ],
    ids=["full_resync", "resync_destination"],
)
def test_a_form_without_a_reason_is_refused_by_the_schema_before_the_run_exists(
    definitions: dg.Definitions, job_name: str, form: dict
) -> None:
    message = _refused(definitions, job_name, form)
    assert "Missing required config entr" in message and "reason" in message


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        (
            {"destination": "brze_users"},
            f"destination: 'brze_users' is not a declared destination; {VALID_KEYS}",
        ),
        ({"reason": " "}, "reason: must not be empty"),
        ({"requested_by": ""}, "requested_by: must not be empty"),
    ],
    ids=["unknown-destination", "blank-reason", "blank-requested_by"],
)
def test_a_bad_resync_destination_form_is_refused_before_the_run_exists(
    definitions: dg.Definitions, chain: SandboxChain, form: dict, expected: str
) -> None:
    before = chain.sandbox.trigger_counts()
    good = {"destination": "braze_users", "reason": "attributes changed", "requested_by": "dana"}
    message = _refused(definitions, "resync_destination", {**good, **form})
    assert expected in message
    assert message.startswith("The resync_destination form is invalid")
    assert chain.sandbox.trigger_counts() == before


def _started_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    return {
        entry.step_key or ""
        for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
    }


def test_resync_destination_starts_no_op_of_the_other_destinations(
    definitions: dg.Definitions, chain: SandboxChain
) -> None:
    form = {"destination": "braze_users", "reason": "attributes changed", "requested_by": "dana"}
    result = definitions.resolve_job_def("resync_destination").execute_in_process(
        instance=chain.instance, run_config=form, raise_on_error=False
    )
    assert result.success
    assert chain.instance.get_run_by_id(result.run_id).run_config == form  # what a re-run reuses
    assert _started_steps(chain.instance, result.run_id) == {
        "resync_request",
        "resync__braze_users",
        "announce_resync",
    }
    skipped = {
        entry.step_key
        for entry in chain.instance.all_logs(
            result.run_id, of_type=dg.DagsterEventType.STEP_SKIPPED
        )
    }
    assert skipped == {f"resync__{key}" for key in KEYS if key != "braze_users"}
    [event] = result.get_asset_materialization_events()
    assert event.asset_key == dg.AssetKey(["activate", "braze_users"])
    assert event.materialization.metadata["reason"].value == "attributes changed"


def test_full_resync_starts_only_the_planned_slots(
    definitions: dg.Definitions, chain: SandboxChain
) -> None:
    form = {
        **GOOD_WAVES,
        "destinations": ["braze_users", "hubspot_contacts"],
        "wave_overrides": {"hubspot_contacts": 1},
        "pause_seconds": 0,
    }
    result = definitions.resolve_job_def("full_resync").execute_in_process(
        instance=chain.instance, run_config=form, raise_on_error=False
    )
    assert result.success
    started = _started_steps(chain.instance, result.run_id)
    syncing = {step for step in started if "__" in step}
    assert syncing == {"wave1__braze_users", "wave1__hubspot_contacts"}
    assert {"resync_plan", "after_wave1", "after_wave2", "resync_report"} <= started
    synced = {e.asset_key.path[-1] for e in result.get_asset_materialization_events()}
    assert synced == {"braze_users", "hubspot_contacts"}


# -- the Launchpad: the webserver's GraphQL over the code location's gRPC server --------------

LAUNCH = """
mutation ($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId runConfigYaml } }
    ... on PythonError { message className }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
FORM_SCHEMA = """
query ($selector: PipelineSelector!) {
  runConfigSchemaOrError(selector: $selector) {
    ... on RunConfigSchema { rootConfigType { ... on CompositeConfigType {
      fields { name description isRequired } } } }
  }
}
"""


def test_the_launchpad_shows_the_form_and_refuses_a_bad_one_before_the_run_exists(
    chain: SandboxChain,
) -> None:
    from dagster_graphql.test.utils import (
        define_out_of_process_context,
        execute_dagster_graphql,
        infer_job_selector,
    )

    from activation.defs.resync.one_off import ResyncRequest
    from activation.defs.resync.waves import FullResyncConfig

    forms = {"full_resync": FullResyncConfig, "resync_destination": ResyncRequest}
    bad = {
        "full_resync": (
            {**GOOD_WAVES, "wave_overrides": {"hubspot_contact": 2}},
            "wave_overrides.hubspot_contact",
        ),
        "resync_destination": (
            {"destination": "brze_users", "reason": "r", "requested_by": "ops"},
            "destination: 'brze_users'",
        ),
    }
    good = {
        "full_resync": {**GOOD_WAVES, "pause_seconds": 0},
        "resync_destination": {"destination": "braze_users", "reason": "r", "requested_by": "ops"},
    }
    with (
        dg.instance_for_test() as instance,
        define_out_of_process_context(str(DEFINITIONS_FILE), "defs", instance) as context,
    ):
        for job_name, form_class in forms.items():
            selector = infer_job_selector(context, job_name)
            schema = execute_dagster_graphql(context, FORM_SCHEMA, {"selector": selector}).data
            fields = schema["runConfigSchemaOrError"]["rootConfigType"]["fields"]
            # The Launchpad's form is the job's form, each field with its description.
            assert {f["name"]: f["description"] for f in fields} == {
                name: field.description for name, field in form_class.model_fields.items()
            }
            assert {f["name"] for f in fields if f["isRequired"]} >= {"reason", "requested_by"}

            form, field = bad[job_name]
            params = {"selector": selector, "runConfigData": form, "mode": "default"}
            launched = execute_dagster_graphql(context, LAUNCH, {"executionParams": params})
            answer = launched.data["launchPipelineExecution"]
            assert answer["__typename"] == "PythonError", answer
            assert answer["className"] == "FormRefused"
            assert field in answer["message"] and VALID_KEYS in answer["message"]
            assert instance.get_runs() == []

        for job_name, form in good.items():
            params = {
                "selector": infer_job_selector(context, job_name),
                "runConfigData": form,
                "mode": "default",
            }
            launched = execute_dagster_graphql(context, LAUNCH, {"executionParams": params})
            answer = launched.data["launchPipelineExecution"]
            assert answer["__typename"] == "LaunchRunSuccess", answer
        # Queued (no daemon here to dequeue them), with the form as their run config.
        runs = instance.get_runs()
        assert sorted(r.job_name for r in runs) == ["full_resync", "resync_destination"]
        assert all(r.status == dg.DagsterRunStatus.QUEUED for r in runs)
        assert {r.job_name: r.run_config for r in runs} == good
