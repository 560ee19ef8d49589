"""The `activation` command: the sandbox server, the demo, and `dagster dev` with the sandbox."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from activation.lib.paths import data_dir

if TYPE_CHECKING:
    from activation.tooling.dagster_home import DagsterHome


def _sandbox(args: argparse.Namespace) -> int:
    from activation.sandbox.app import serve
    from activation.sandbox.context import SandboxSettings

    settings = SandboxSettings(
        data_dir=Path(args.data_dir).resolve() if args.data_dir else data_dir(),
        rows=args.rows,
        phase_seconds=args.phase_seconds,
        hightouch_token=args.hightouch_token,
    )
    serve(settings, host=args.host, port=args.port)
    return 0


def _prepare(args: argparse.Namespace) -> int:
    from activation.tooling.demo import prepare_dbt_manifest

    print(f"dbt manifest ready: {prepare_dbt_manifest()}")
    return 0


def _refresh(args: argparse.Namespace) -> int:
    from activation.core.airbyte_listing import refresh_listing
    from activation.lib.environment import MissingSettingError
    from activation.resources import build_airbyte_workspace

    try:
        listing = refresh_listing(build_airbyte_workspace())
    except MissingSettingError as error:
        print(f"activation refresh: {error}", file=sys.stderr)
        return 2
    streams = len(listing.workspace.to_airbyte_connection_table_props_data())
    print(f"Airbyte listing ready: {listing.path} ({streams} streams)")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from activation.tooling.demo import run_demo

    return run_demo()


def _dev(args: argparse.Namespace) -> int:
    from activation.tooling.dev import run_dev

    return run_dev(port=args.port, sandbox_port=args.sandbox_port, webhook_port=args.webhook_port)


def _webhooks(args: argparse.Namespace) -> int:
    from activation.lib.environment import MissingSettingError
    from activation.webhooks.intake import serve

    try:
        serve(args.host, args.port, args.tolerance_seconds)
    except MissingSettingError as error:
        print(f"activation webhooks: {error}", file=sys.stderr)
        return 2
    return 0


def _lineage(args: argparse.Namespace) -> int:
    from activation.tooling.lineage import run_lineage

    return run_lineage(args.fields)


def _decide(args: argparse.Namespace) -> int:
    """Record an approve or reject of a waiting promote run in the instance it lives in:
    `--dagster-home`, else DAGSTER_HOME, else the dev instance. A home that holds no instance is
    refused before Dagster opens it (Dagster would create one there)."""
    from activation.tooling.dagster_home import HomeError, resolve_home

    try:
        home = resolve_home(args.dagster_home, os.environ)
        if home.dev:
            print(
                f"activation: using the dev instance at {home.path} (DAGSTER_HOME is unset)",
                file=sys.stderr,
            )
        return _record_decision(args, home)
    except HomeError as error:
        print(f"activation: error: {error}", file=sys.stderr)
        return 2


def _record_decision(args: argparse.Namespace, home: DagsterHome) -> int:
    from activation.core.approvals import DecisionRefused, Verdict, record_decision
    from activation.tooling.dagster_home import open_instance

    verdict = Verdict(args.command)
    run_id = args.run_id.strip()
    with open_instance(home) as instance:
        try:
            decision = record_decision(
                instance,
                promotion_run_id=run_id,
                verdict=verdict,
                reviewer=args.reviewer,
                code=args.code,
                note=(args.comment if verdict is Verdict.APPROVE else args.reason) or "",
                staging_run_id=args.staging_run,
                source="cli",
            )
        except DecisionRefused as error:
            if instance.get_run_record_by_id(run_id) is None:
                print(
                    f"activation: error: no Dagster run {run_id!r} in the Dagster instance at "
                    f"{home}; pass --dagster-home with the home of the Dagster that ran promote",
                    file=sys.stderr,
                )
            else:
                print(f"activation {args.command}: {error}", file=sys.stderr)
            return 1
    note = f" ({decision.note})" if decision.note else ""
    print(
        f"Recorded: {decision.verdict.value} of promotion run {decision.promotion_run_id} by "
        f"{decision.reviewer} at {decision.decided_at_utc}{note}; staging Hightouch run "
        f"{decision.staging.run_id} (+{decision.staging.planned_added} "
        f"~{decision.staging.planned_changed} -{decision.staging.planned_removed} planned, "
        f"{decision.staging.failed_total} failed)"
    )
    return 0


def _decision_parser(commands: argparse._SubParsersAction, name: str, help_text: str) -> None:
    decide = commands.add_parser(name, help=help_text)
    decide.add_argument("run_id", metavar="RUN_ID", help="Run id of the waiting promote run.")
    decide.add_argument(
        "--reviewer", required=True, help="Your name (checked against the run's allow-list)."
    )
    decide.add_argument(
        "--code", required=True, help="The one-time approval code from the review message."
    )
    decide.add_argument(
        "--staging-run",
        help="The staging Hightouch run id from the review "
        "message (default: the one under review).",
    )
    decide.add_argument(
        "--dagster-home",
        metavar="PATH",
        help="The Dagster home the promote run lives in (default: $DAGSTER_HOME, else the dev "
        "instance of `activation dev`).",
    )
    if name == "approve":
        decide.add_argument("--comment", default="", help="Why you approve (optional).")
    else:
        decide.add_argument("--reason", required=True, help="Why you reject (required).")
    decide.set_defaults(handler=_decide)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="activation", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    sandbox = commands.add_parser(
        "sandbox", help="Serve the local stand-ins of Airbyte, Hightouch, the CRMs and Slack."
    )
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument(
        "--data-dir",
        help="Warehouse and sandbox state (default: $ACTIVATION_DATA_DIR or .activation)",
    )
    sandbox.add_argument(
        "--rows", type=int, default=1000, help="Customers per Airbyte sync (up to 1,000,000)."
    )
    sandbox.add_argument(
        "--phase-seconds", type=float, default=0.2, help="Duration of each job or run phase."
    )
    sandbox.add_argument(
        "--hightouch-token", help="Accept only this Bearer token (default: any non-empty token)."
    )
    sandbox.set_defaults(handler=_sandbox)

    prepare = commands.add_parser("prepare", help="Parse the dbt project into its manifest.")
    prepare.set_defaults(handler=_prepare)

    refresh = commands.add_parser(
        "refresh",
        help="List the Airbyte connections and streams into the stored listing the code "
        "location loads (it never calls Airbyte while loading).",
    )
    refresh.set_defaults(handler=_refresh)

    demo = commands.add_parser(
        "demo", help="Run the chain on the sandbox on good data, then on bad data."
    )
    demo.set_defaults(handler=_demo)

    dev = commands.add_parser("dev", help="The sandbox plus `dagster dev` on the code location.")
    dev.add_argument("--port", type=int, default=3000, help="Dagster webserver port.")
    dev.add_argument("--sandbox-port", type=int, default=8765)
    dev.add_argument(
        "--webhook-port", type=int, default=8766, help="Port of the signal intake it starts."
    )
    dev.set_defaults(handler=_dev)

    webhooks = commands.add_parser(
        "webhooks", help="Serve the signed webhook intake (secret: $ACTIVATION_WEBHOOK_SECRET)."
    )
    webhooks.add_argument("--port", type=int, default=8780)
    webhooks.add_argument(
        "--host", default="127.0.0.1", help="Keep 127.0.0.1 behind a TLS-terminating proxy."
    )
    webhooks.add_argument(
        "--tolerance-seconds",
        type=float,
        default=300.0,
        help="Reject generic signals whose timestamp is further than this from now.",
    )
    webhooks.set_defaults(handler=_webhooks)

    lineage = commands.add_parser(
        "lineage",
        help="Print the chain from a destination field back to the raw source column feeding "
        "it, e.g. `activation lineage salesforce_contacts.Email` (compiles the dbt project; "
        "opens no warehouse).",
    )
    lineage.add_argument(
        "fields",
        nargs="+",
        metavar="DESTINATION.FIELD",
        help="A destination key (or type.object, e.g. salesforce.Contact) and a field name.",
    )
    lineage.set_defaults(handler=_lineage)

    _decision_parser(commands, "approve", "Approve a promote run waiting for sign-off.")
    _decision_parser(commands, "reject", "Reject a promote run waiting for sign-off.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
