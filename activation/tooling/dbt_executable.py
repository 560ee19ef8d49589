"""`activation-dbt`: the dbt executable the dbt resource runs (its `dbt_executable`).

dagster-dbt asks `dbt --version` before every dbt command of every run, and that answer costs a
full start of dbt's CLI (about 2 s of CPU here) each time. This entry point answers it from the
installed dbt-core's metadata in a few milliseconds, and hands every other command to the real
dbt beside it, by exec, so dbt runs exactly as it would have: same process, arguments,
environment and exit code.
"""

import os
import sys
from importlib.metadata import version
from pathlib import Path


def real_dbt() -> str:
    beside = Path(sys.executable).parent / "dbt"
    return str(beside) if beside.exists() else "dbt"


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        # The format dbt prints first ("Core: - installed: X.Y.Z"); dagster-dbt reads X.Y.Z.
        print(f"Core:\n  - installed: {version('dbt-core')}")
        return
    dbt = real_dbt()
    os.execvp(dbt, [dbt, *sys.argv[1:]])


if __name__ == "__main__":
    main()
