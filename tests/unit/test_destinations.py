"""The destinations declaration: the shipped file is valid, and mistakes name file and field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from activation.lib.destinations import (
    Destination,
    DestinationsFileError,
    parse_destinations,
    syncs_waiting_behind,
    validate_against_manifest,
    validate_against_manifest_file,
)
from activation.lib.paths import DBT_PROJECT_DIR, DEFAULT_DESTINATIONS_FILE


def _write(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "destinations.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _shipped() -> dict:
    return yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())


def test_shipped_declaration_covers_the_four_crms() -> None:
    destinations = parse_destinations(DEFAULT_DESTINATIONS_FILE)
    assert {d.destination_type for d in destinations} == {
        "salesforce",
        "hubspot",
        "iterable",
        "braze",
    }
    assert all(d.primary_key not in d.mapped_columns for d in destinations)


def test_missing_field_names_file_destination_and_field(tmp_path: Path) -> None:
    document = _shipped()
    del document["destinations"][2]["primary_key"]
    path = _write(tmp_path, document)
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(path)
    message = str(error.value)
    assert str(path) in message
    assert "destinations[2] (hubspot_contacts).primary_key" in message


def test_unknown_field_is_refused(tmp_path: Path) -> None:
    document = _shipped()
    document["destinations"][0]["sync_idd"] = "1"
    with pytest.raises(DestinationsFileError, match=r"sync_idd: Extra inputs are not permitted"):
        parse_destinations(_write(tmp_path, document))


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d[1].update(key=d[0]["key"]), "key 'salesforce_accounts' is declared twice"),
        (lambda d: d[1].update(sync_id=d[0]["sync_id"]), "sync_id '101' is declared twice"),
        (lambda d: d[0].update(after=["nowhere"]), "after names unknown destination 'nowhere'"),
        (
            lambda d: (
                d[0].update(after=["salesforce_contacts"]),
                d[1].update(after=["salesforce_accounts"]),
            ),
            "after forms a cycle",
        ),
        (lambda d: (d[0].pop("sync_id"), d[0].pop("sync_slug")), "give sync_id or sync_slug"),
        (lambda d: d[0].update(destination_type="marketo"), "destination_type"),
        (
            lambda d: d[0]["staging"].update(sync_id=d[1]["sync_id"]),
            r"sync_id '102' is declared twice \(salesforce_contacts and "
            r"salesforce_accounts.staging\)",
        ),
        (
            lambda d: d[4]["staging"].update(sync_slug=d[3]["staging"]["sync_slug"]),
            r"sync_slug 'iterable-lifecycle-users-staging' is declared twice "
            r"\(iterable_users.staging and braze_users.staging\)",
        ),
        (
            lambda d: d[2]["staging"].update(sync_id=d[2]["sync_id"]),
            r"sync_id '201' is declared twice \(hubspot_contacts and hubspot_contacts.staging\)",
        ),
        (lambda d: d[0].update(staging={}), "give sync_id or sync_slug .* the staging sync"),
        (
            lambda d: d[0]["staging"].update(sync_id="four-oh-two"),
            r"destinations\[0\] \(salesforce_accounts\).staging.sync_id",
        ),
        (lambda d: d[0]["staging"].update(object="x"), "staging.object: Extra inputs"),
    ],
    ids=[
        "duplicate-key",
        "duplicate-sync-id",
        "unknown-after",
        "cycle",
        "no-sync",
        "bad-type",
        "staging-id-is-another-production-id",
        "two-staging-slugs-alike",
        "staging-id-is-its-own-production-id",
        "staging-without-reference",
        "staging-id-not-digits",
        "staging-unknown-field",
    ],
)
def test_inconsistent_declarations_are_refused(tmp_path: Path, edit, expected: str) -> None:
    document = _shipped()
    edit(document["destinations"])
    with pytest.raises(DestinationsFileError, match=expected):
        parse_destinations(_write(tmp_path, document))


def test_not_yaml_is_reported_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "destinations.yaml"
    path.write_text("destinations: [\n")
    with pytest.raises(DestinationsFileError, match="not valid YAML"):
        parse_destinations(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"guards": {"required_columns": ["not_a_column"]}}, "not a mapped column"),
        ({"guards": {"max_removed_ratio": 1.5}}, "guards.max_removed_ratio"),
        ({"failure_policy": {"max_failed_ratio": -0.1}}, "failure_policy.max_failed_ratio"),
        ({"failure_policy": {"on_exceed": "ignore"}}, "failure_policy.on_exceed"),
        ({"wave": 0}, "wave"),
    ],
)
def test_policies_guards_and_waves_are_validated(
    tmp_path: Path, change: dict, message: str
) -> None:
    document = _shipped()
    document["destinations"][2].update(change)
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(_write(tmp_path, document))
    assert "(hubspot_contacts)" in str(error.value) and message in str(error.value)


def test_declared_policies_and_waves_are_read() -> None:
    by_key = {d.key: d for d in parse_destinations(DEFAULT_DESTINATIONS_FILE)}
    assert by_key["salesforce_contacts"].after == ("salesforce_accounts",)
    assert by_key["salesforce_contacts"].wave == 2
    assert by_key["braze_users"].pool == "hightouch_braze_users"


def test_every_shipped_destination_declares_its_staging_twin() -> None:
    by_key = {d.key: d for d in parse_destinations(DEFAULT_DESTINATIONS_FILE)}
    twins = {
        key: (d.staging.sync_id, d.staging.sync_slug) for key, d in by_key.items() if d.staging
    }
    assert twins == {
        "salesforce_accounts": ("402", "salesforce-accounts-staging"),
        "salesforce_contacts": ("403", "salesforce-contacts-staging"),
        "hubspot_contacts": ("404", "hubspot-marketing-contacts-staging"),
        "iterable_users": ("405", "iterable-lifecycle-users-staging"),
        "braze_users": ("406", "braze-engagement-users-staging"),
    }
    assert by_key["braze_users"].staging.sync_reference == "406"


# -- duplicate keys: PyYAML alone keeps the last one without a word -------------------------------

_ONE_DESTINATION = """\
  - key: braze_users
    destination_type: braze
    object: users
    sync_id: "401"
    mart: mart_braze_users
    primary_key: external_id
    mapped_columns: [email]
    owner: {team: t, slack_channel: "#c", pagerduty_routing_key_env: PD_KEY}
"""


@pytest.mark.parametrize(
    ("text", "line", "key"),
    [
        (
            "destinations:\n"
            + _ONE_DESTINATION.replace("braze_users", "other")
            + "destinations:\n"
            + _ONE_DESTINATION,
            10,
            "destinations",
        ),
        (
            "destinations:\n"
            + _ONE_DESTINATION.replace(
                "    primary_key:", "    mart: mart_other\n    primary_key:"
            ),
            7,
            "mart",
        ),
        (
            "destinations:\n"
            + _ONE_DESTINATION.replace("owner: {team: t,", "owner: {team: t, team: u,"),
            9,
            "team",
        ),
    ],
    ids=["top-level", "in-a-destination", "nested-flow-mapping"],
)
def test_a_repeated_yaml_key_is_refused_with_its_line(
    tmp_path: Path, text: str, line: int, key: str
) -> None:
    path = tmp_path / "destinations.yaml"
    path.write_text(text)
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(path)
    message = str(error.value)
    assert str(path) in message
    assert f"line {line}: key {key!r} is repeated" in message


def test_a_merge_key_overridden_by_an_explicit_key_is_not_a_repeat(tmp_path: Path) -> None:
    first = _ONE_DESTINATION.replace("owner: {", "owner: &owner {")
    second = (
        _ONE_DESTINATION.replace("braze_users", "braze_users_eu")
        .replace('"401"', '"402"')
        .replace(
            'owner: {team: t, slack_channel: "#c", pagerduty_routing_key_env: PD_KEY}',
            "owner: {<<: *owner, team: u}",
        )
    )
    path = tmp_path / "destinations.yaml"
    path.write_text("destinations:\n" + first + second)
    eu = parse_destinations(path)[1]
    assert (eu.owner.team, eu.owner.slack_channel) == ("u", "#c")


# -- the declaration against the dbt manifest -----------------------------------------------------


def _manifest_of(destinations: tuple[Destination, ...]) -> dict[str, Any]:
    """A manifest whose models have exactly the columns the declaration uses."""
    return {
        "nodes": {
            f"model.activation.{d.mart}": {
                "resource_type": "model",
                "name": d.mart,
                "columns": {c: {"name": c} for c in (d.primary_key, *d.mapped_columns)},
            }
            for d in destinations
        }
    }


def _shipped_destinations() -> tuple[Destination, ...]:
    return parse_destinations(DEFAULT_DESTINATIONS_FILE)


def test_a_declaration_matching_the_manifest_passes() -> None:
    destinations = _shipped_destinations()
    validate_against_manifest(destinations, _manifest_of(destinations), DEFAULT_DESTINATIONS_FILE)


def test_an_unknown_mapped_column_names_file_destination_and_field() -> None:
    destinations = list(_shipped_destinations())
    manifest = _manifest_of(tuple(destinations))
    hubspot = destinations[2]
    destinations[2] = hubspot.model_copy(
        update={
            "mapped_columns": tuple(
                c + "y" if c == "country" else c for c in hubspot.mapped_columns
            )
        }
    )
    with pytest.raises(DestinationsFileError) as error:
        validate_against_manifest(destinations, manifest, Path("destinations.yaml"))
    assert str(error.value) == (
        "destinations.yaml: destinations[2] (hubspot_contacts).mapped_columns: column "
        "'countryy' is not a column of model mart_hubspot_contacts in the dbt manifest "
        "(columns: contact_id, email, first_name, last_name, lifecycle_stage, country)"
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"mart": "mart_hubspot_contact"},
            "destinations[2] (hubspot_contacts).mart: 'mart_hubspot_contact' is not a model in "
            "the dbt manifest (did you mean mart_hubspot_contacts",
        ),
        (
            {"primary_key": "customer_id"},
            "destinations[2] (hubspot_contacts).primary_key: column 'customer_id' is not a column",
        ),
    ],
    ids=["unknown-mart", "unknown-primary-key"],
)
def test_a_mart_or_key_missing_from_the_manifest_is_refused(
    change: dict[str, str], expected: str
) -> None:
    destinations = list(_shipped_destinations())
    manifest = _manifest_of(tuple(destinations))
    destinations[2] = destinations[2].model_copy(update=change)
    with pytest.raises(DestinationsFileError, match=re.escape(expected)):
        validate_against_manifest(destinations, manifest, DEFAULT_DESTINATIONS_FILE)


def test_a_required_column_missing_from_the_manifest_is_named_under_guards() -> None:
    destinations = list(_shipped_destinations())
    destinations[2] = destinations[2].model_copy(
        update={
            "guards": destinations[2].guards.model_copy(update={"required_columns": ("email",)})
        }
    )
    manifest = _manifest_of(tuple(destinations))
    del manifest["nodes"]["model.activation.mart_hubspot_contacts"]["columns"]["email"]
    with pytest.raises(DestinationsFileError) as error:
        validate_against_manifest(destinations, manifest, DEFAULT_DESTINATIONS_FILE)
    message = str(error.value)
    assert "(hubspot_contacts).mapped_columns: column 'email'" in message
    assert "(hubspot_contacts).guards.required_columns: column 'email'" in message


def test_a_model_without_listed_columns_says_so() -> None:
    destinations = _shipped_destinations()
    manifest = _manifest_of(destinations)
    manifest["nodes"]["model.activation.mart_braze_users"]["columns"] = {}
    with pytest.raises(DestinationsFileError, match="columns: none listed in its schema yml"):
        validate_against_manifest(destinations, manifest, DEFAULT_DESTINATIONS_FILE)


@pytest.fixture(scope="module")
def parsed_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`dbt parse` of the real project into a private folder (tests elsewhere share target/)."""
    folder = tmp_path_factory.mktemp("dbt_parse")
    dbt = Path(sys.executable).parent / "dbt"
    subprocess.run(
        [
            str(dbt) if dbt.exists() else "dbt",
            "parse",
            "--quiet",
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target-path",
            str(folder / "target"),
            "--log-path",
            str(folder / "logs"),
        ],
        env={**os.environ, "ACTIVATION_DATA_DIR": str(folder), "DO_NOT_TRACK": "1"},
        check=True,
        timeout=300,
    )
    return folder / "target" / "manifest.json"


def test_the_shipped_declaration_matches_the_dbt_project(parsed_manifest: Path) -> None:
    """Every declared mart and column is in the marts' schema yml, as loading requires."""
    validate_against_manifest_file(
        _shipped_destinations(), parsed_manifest, DEFAULT_DESTINATIONS_FILE
    )
    models = {n["name"]: n for n in json.loads(parsed_manifest.read_text())["nodes"].values()}
    assert all(models[d.mart]["columns"] for d in _shipped_destinations())


# -- wait: attached | detached | auto ------------------------------------------------------------


def test_wait_defaults_to_auto_except_where_another_destination_runs_after() -> None:
    by_key = {d.key: d for d in parse_destinations(DEFAULT_DESTINATIONS_FILE)}
    # salesforce_contacts runs after salesforce_accounts, which must therefore wait attached.
    assert by_key["salesforce_accounts"].wait == "attached"
    assert {by_key[k].wait for k in by_key if k != "salesforce_accounts"} == {"auto"}
    assert all(d.detach_after_seconds == 900 for d in by_key.values())


def test_wait_and_detach_after_are_read(tmp_path: Path) -> None:
    document = _shipped()
    document["destinations"][2]["wait"] = "detached"
    document["destinations"][3]["wait"] = "attached"
    document["destinations"][4]["detach_after_seconds"] = 60
    by_key = {d.key: d for d in parse_destinations(_write(tmp_path, document))}
    assert by_key["hubspot_contacts"].wait == "detached"
    assert by_key["iterable_users"].wait == "attached"
    assert by_key["braze_users"].wait == "auto"
    assert by_key["braze_users"].detach_after_seconds == 60


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("wait", "sometimes", "destinations[2] (hubspot_contacts).wait: Input should be"),
        ("detach_after_seconds", 0, "destinations[2] (hubspot_contacts).detach_after_seconds"),
    ],
)
def test_a_bad_wait_names_file_and_field(
    tmp_path: Path, field: str, value: object, expected: str
) -> None:
    document = _shipped()
    document["destinations"][2][field] = value
    path = _write(tmp_path, document)
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_a_detached_destination_that_another_runs_after_is_refused(tmp_path: Path) -> None:
    document = _shipped()
    document["destinations"][0]["wait"] = "detached"  # salesforce_contacts runs after it
    path = _write(tmp_path, document)
    with pytest.raises(DestinationsFileError) as error:
        parse_destinations(path)
    message = str(error.value)
    assert str(path) in message
    assert "destinations[0] (salesforce_accounts).wait: detached" in message
    assert "salesforce_contacts" in message and "attached" in message
    # Without the dependant, the same declaration is accepted.
    del document["destinations"][1]["after"]
    [accounts, *_] = parse_destinations(_write(tmp_path, document))
    assert accounts.wait == "detached"


# -- launch priority: the head of a line of `after` syncs starts first ----------------------------


def test_the_length_of_the_line_behind_each_sync_is_counted_through_after(tmp_path: Path) -> None:
    document = _shipped()
    by_key = {d["key"]: d for d in document["destinations"]}
    # braze after hubspot, hubspot after iterable: a line of three beside accounts -> contacts.
    by_key["braze_users"]["after"] = ["hubspot_contacts"]
    by_key["hubspot_contacts"]["after"] = ["iterable_users"]
    by_key["hubspot_contacts"]["wave"], by_key["braze_users"]["wave"] = 2, 3
    destinations = parse_destinations(_write(tmp_path, document))
    assert syncs_waiting_behind(destinations) == {
        "salesforce_accounts": 1,
        "salesforce_contacts": 0,
        "iterable_users": 2,
        "hubspot_contacts": 1,
        "braze_users": 0,
    }


def test_the_launch_priority_tag_is_set_where_its_executor_reads_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from activation.core.executors import BROKER_VARIABLE, EXECUTOR_VARIABLE, launch_priority_tags

    monkeypatch.delenv(EXECUTOR_VARIABLE, raising=False)
    assert launch_priority_tags(2) == {"dagster/priority": "2"}
    assert launch_priority_tags(0) == {}
    # dagster-celery ignores dagster/priority and warns about it in every run.
    monkeypatch.setenv(EXECUTOR_VARIABLE, "celery")
    monkeypatch.setenv(BROKER_VARIABLE, "redis://localhost:1/0")
    assert launch_priority_tags(2) == {}
