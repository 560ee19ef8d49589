"""The destinations declaration: the shipped file is valid, and mistakes name file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from activation.destinations import DestinationsFileError, parse_destinations
from activation.paths import DEFAULT_DESTINATIONS_FILE


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
    ],
    ids=["duplicate-key", "duplicate-sync-id", "unknown-after", "cycle", "no-sync", "bad-type"],
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
