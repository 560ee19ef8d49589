"""A reviewed snapshot of the code location: assets (group, owners, deps), checks (blocking or
not), jobs, sensors, and the pool and launch priority of every op that has one, loaded with no
sandbox and no Airbyte.

The location is loaded as a deployment would load it: the real-service variables set (pointing
nowhere: nothing is called while loading), the stored Airbyte listing from tests/fixtures, and the
dbt manifest. A change to the graph shows up as a diff of tests/snapshots/code_location.txt in
review; after a deliberate change, rewrite it with
`ACTIVATION_UPDATE_SNAPSHOT=1 pytest tests/unit/test_code_location_snapshot.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

SNAPSHOT = Path(__file__).resolve().parent.parent / "snapshots" / "code_location.txt"


def describe(defs: dg.Definitions) -> str:
    lines: list[str] = []
    specs = sorted(defs.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string())
    for spec in specs:
        deps = ", ".join(sorted(d.asset_key.to_user_string() for d in spec.deps)) or "-"
        owners = ", ".join(spec.owners) or "-"
        lines.append(f"asset {spec.key.to_user_string()} [{spec.group_name}] owners={owners}")
        lines.append(f"  deps: {deps}")
    checks = sorted(
        (spec.asset_key.to_user_string(), spec.name, spec.blocking)
        for definition in [*(defs.assets or []), *(defs.asset_checks or [])]
        for spec in getattr(definition, "check_specs", ())
    )
    for asset, name, blocking in checks:
        lines.append(f"check {asset}:{name}{' (blocking)' if blocking else ''}")
    for job in sorted(defs.resolve_all_job_defs(), key=lambda j: j.name):
        lines.append(f"job {job.name} executor={job.executor_def.name}")
        for node in sorted(job.nodes, key=lambda n: n.name):
            pool = node.definition.pool if isinstance(node.definition, dg.OpDefinition) else None
            priority = node.definition.tags.get("dagster/priority")
            if pool or priority:
                lines.append(
                    f"  op {node.name}"
                    + (f" pool={pool}" if pool else "")
                    + (f" priority={priority}" if priority else "")
                )
    for sensor in sorted(defs.sensors or [], key=lambda s: s.name):
        lines.append(
            f"sensor {sensor.name} default={sensor.default_status.value} "
            f"interval={sensor.minimum_interval_seconds}s"
        )
    lines.append("resources: " + ", ".join(sorted(defs.resources or {})))
    return "\n".join(lines) + "\n"


def test_the_code_location_matches_its_reviewed_snapshot(location: dg.Definitions) -> None:
    text = describe(location)
    if os.environ.get("ACTIVATION_UPDATE_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(text)
    assert text == SNAPSHOT.read_text(), (
        "the code location changed; review the diff and rewrite the snapshot "
        "(ACTIVATION_UPDATE_SNAPSHOT=1)"
    )


def test_loading_calls_no_service_and_says_how_old_the_airbyte_listing_is(
    location: dg.Definitions,
) -> None:
    raw = [s for s in location.resolve_all_asset_specs() if s.key.path[0] == "raw"]
    assert raw, "the stored listing gave no raw/* assets"
    for spec in raw:
        assert "airbyte_listing_refreshed_at" in spec.metadata


def test_dg_checks_and_lists_the_definitions(location: dg.Definitions) -> None:
    """`dg check defs` and `dg list defs`, as a newcomer runs them, with no service reachable."""
    import json
    import subprocess
    import sys

    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    checked = subprocess.run(
        ["dg", "check", "defs"], env=env, capture_output=True, text=True, timeout=300
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "All definitions loaded successfully" in checked.stdout + checked.stderr
    listed = subprocess.run(
        ["dg", "list", "defs", "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert listed.returncode == 0, listed.stderr
    keys = {asset["asset_key"] for asset in json.loads(listed.stdout)["assets"]}
    assert {"activate/salesforce_contacts", "raw/customers", "marts/mart_hubspot_contacts"} <= keys
