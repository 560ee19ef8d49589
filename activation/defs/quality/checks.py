"""Pluggable quality: any blocking asset check on a mart gates its syncs, dbt or not.

The gate (`activation/core/gate.py`) reads every blocking check defined on the assets upstream of a
sync, so a team adds a rule by adding an asset check, nothing else. This module shows it with one
Python check that dbt's generic tests cannot express simply: no two Salesforce contacts share an
email address (case-insensitive), which Salesforce duplicate rules would reject or merge. See
docs/quality-gate.md for Great Expectations and Elementary.

`build_quality_definitions` is this concern's entry in activation/definitions.py: the guard checks
(one per destination), the Python check, the paging sensor for syncs a failed run blocked, and the
`pagerduty` resource the gate pages with.
"""

import dagster as dg

from activation.core.gate import build_blocked_sync_sensor
from activation.core.guards import build_guard_check, fingerprint_metadata, mart_fingerprints
from activation.lib.destinations import (
    Destination,
    load_destinations,
    mart_asset_key,
    syncs_waiting_behind,
)
from activation.lib.warehouse import warehouse_connection

CONTACTS_MART = "mart_salesforce_contacts"
_EXAMPLES = 5


@dg.asset_check(
    asset=mart_asset_key(CONTACTS_MART),
    name="contact_emails_unique",
    blocking=True,
    description="No two contacts share an email address (compared case-insensitively): "
    "Salesforce duplicate rules would reject or merge them.",
)
def contact_emails_unique(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    with warehouse_connection(read_only=True) as session:
        shared = session.rows(
            f"SELECT lower(email) AS email, count(*) AS contacts FROM marts.{CONTACTS_MART} "
            "WHERE email IS NOT NULL GROUP BY 1 HAVING count(*) > 1 ORDER BY 2 DESC, 1"
        )
        examples = session.rows(
            f"SELECT contact_id FROM marts.{CONTACTS_MART} WHERE lower(email) IN "
            f"(SELECT lower(email) FROM marts.{CONTACTS_MART} GROUP BY 1 HAVING count(*) > 1) "
            f"ORDER BY contact_id LIMIT {_EXAMPLES}"
        )
        judged = mart_fingerprints(session, CONTACTS_MART, load_destinations())
    contacts = sum(int(count) for _, count in shared)
    if shared:
        context.log.error(f"{len(shared)} email addresses are shared by {contacts} contacts")
    return dg.AssetCheckResult(
        passed=not shared,
        severity=dg.AssetCheckSeverity.ERROR,
        # Contact ids, not emails: check metadata is visible to every UI user.
        description=f"{len(shared)} email addresses shared by {contacts} contacts"
        if shared
        else None,
        metadata={
            "shared_emails": len(shared),
            "contacts_sharing_an_email": contacts,
            "example_contact_ids": dg.MetadataValue.json([row[0] for row in examples]),
            **fingerprint_metadata(judged),
        },
    )


def build_quality_definitions(destinations: tuple[Destination, ...]) -> dg.Definitions:
    """Guard checks per destination, the Python quality check, the sensor that pages for syncs
    a failed run blocked, and the `pagerduty` resource."""
    # A blocking check holds up every sync of its mart: its guard launches as early as the
    # earliest of them needs.
    waiting_behind = syncs_waiting_behind(destinations)
    mart_priority: dict[str, int] = {}
    for d in destinations:
        mart_priority[d.mart] = max(mart_priority.get(d.mart, 0), waiting_behind[d.key])
    checks = [build_guard_check(d, mart_priority[d.mart]) for d in destinations]
    if any(d.mart == CONTACTS_MART for d in destinations):
        checks.append(contact_emails_unique)
    return dg.Definitions(
        asset_checks=checks,
        sensors=[build_blocked_sync_sensor(destinations)],
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_quality_definitions(load_destinations())
