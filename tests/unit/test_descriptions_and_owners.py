"""Every asset and asset check explains itself in the UI, and every asset says who owns it.

The code location is loaded as tests/unit/test_code_location_snapshot.py loads it: no sandbox,
the real-service variables pointing nowhere, the stored Airbyte listing and a fresh dbt manifest.
A dbt test without a `description:` in dbt_project/models/**/*.yml shows up here as a check
without one, a model without `config.meta.owner` as an asset without owners.
"""

from __future__ import annotations

import dagster as dg


def _asset_specs(defs: dg.Definitions) -> list[dg.AssetSpec]:
    return sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string())


def _check_specs(defs: dg.Definitions) -> list[dg.AssetCheckSpec]:
    specs = [
        spec
        for definition in [*(defs.assets or []), *(defs.asset_checks or [])]
        for spec in getattr(definition, "check_specs", ())
    ]
    return sorted(specs, key=lambda s: (s.asset_key.to_user_string(), s.name))


def _undescribed(description: str | None, placeholder: str | None = None) -> bool:
    """No description, or only dagster-dbt's stand-in (`dbt model <name>` above the SQL)."""
    text = (description or "").strip()
    if placeholder and (text == placeholder or text.startswith(placeholder + "\n")):
        return True
    return not text


def test_the_location_has_assets_and_checks(location: dg.Definitions) -> None:
    assert len(_asset_specs(location)) >= 20
    assert len(_check_specs(location)) >= 50


def test_every_asset_check_has_a_description(location: dg.Definitions) -> None:
    offenders = [
        f"{spec.asset_key.to_user_string()}:{spec.name}"
        for spec in _check_specs(location)
        if _undescribed(spec.description)
    ]
    assert not offenders, (
        f"{len(offenders)} asset checks have no description (a dbt test takes one as "
        "`description:` next to its `arguments:`):\n  " + "\n  ".join(offenders)
    )


def test_every_asset_has_a_description(location: dg.Definitions) -> None:
    offenders = [
        spec.key.to_user_string()
        for spec in _asset_specs(location)
        if _undescribed(spec.description, f"dbt model {spec.key.path[-1]}")
    ]
    assert not offenders, f"{len(offenders)} assets have no description:\n  " + "\n  ".join(
        offenders
    )


def test_every_asset_has_an_owner(location: dg.Definitions) -> None:
    offenders = [spec.key.to_user_string() for spec in _asset_specs(location) if not spec.owners]
    assert not offenders, (
        f"{len(offenders)} assets have no owner (dbt models: `config.meta.owner`):\n  "
        + "\n  ".join(offenders)
    )


def test_each_mart_is_owned_by_the_teams_of_the_destinations_reading_it(
    location: dg.Definitions,
) -> None:
    from activation.lib.destinations import load_destinations, mart_asset_key

    owners = {spec.key: set(spec.owners) for spec in _asset_specs(location)}
    missing = [
        f"{mart_asset_key(d.mart).to_user_string()} lacks team:{d.owner.team} ({d.key})"
        for d in load_destinations()
        if f"team:{d.owner.team}" not in owners.get(mart_asset_key(d.mart), set())
    ]
    assert not missing, "\n".join(missing)
