"""Imported by Python at start-up in every process `activation dev` starts (this folder is put
first on their PYTHONPATH: dagster dev, its webserver, daemon, code servers and run workers, and
dbt): Dagster's Beta, Preview and supersession notices stay out of the dev log.

PYTHONWARNINGS cannot say this: Python reads it before site-packages is on sys.path, so
`ignore::dagster.BetaWarning` is refused with "Invalid -W option ignored: invalid module name".
Matching by category here would mean importing Dagster into every process, dbt's included, so
the filters match the start of Dagster's message templates (dagster_shared/utils/warnings.py).
A sitecustomize found further down sys.path still runs.
"""

import importlib.machinery
import os
import sys
import warnings

DAGSTER_NOTICES = (
    r".*\bis currently in beta, and may have breaking changes",
    r".*\bis currently in preview, and may have breaking changes",
    r".*\bis superseded and its usage is discouraged",
)


def _silence_dagster_notices() -> None:
    for message in DAGSTER_NOTICES:
        warnings.filterwarnings("ignore", message=message, category=Warning)


def _run_shadowed_sitecustomize() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        from importlib.util import module_from_spec  # only then: every process pays for this

        module = module_from_spec(spec)
        spec.loader.exec_module(module)


_silence_dagster_notices()
_run_shadowed_sitecustomize()
