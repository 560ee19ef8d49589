"""The `activation` command: the sandbox server, the demo, and `dagster dev` with the sandbox."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from activation.paths import data_dir


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
    from activation.demo import prepare_dbt_manifest

    print(f"dbt manifest ready: {prepare_dbt_manifest()}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from activation.demo import run_demo

    return run_demo()


def _dev(args: argparse.Namespace) -> int:
    from activation.dev import run_dev

    return run_dev(port=args.port, sandbox_port=args.sandbox_port)


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

    demo = commands.add_parser(
        "demo", help="Run the chain on the sandbox on good data, then on bad data."
    )
    demo.set_defaults(handler=_demo)

    dev = commands.add_parser("dev", help="The sandbox plus `dagster dev` on the code location.")
    dev.add_argument("--port", type=int, default=3000, help="Dagster webserver port.")
    dev.add_argument("--sandbox-port", type=int, default=8765)
    dev.set_defaults(handler=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
