"""Imported only by the multiprocess executor's forkserver (`PARALLEL_SYNCS` in
activation/components/hightouch_syncs.py lists it in `preload_modules`).

Work at import is this module's whole purpose: the forkserver imports it once per run, before
forking any step process, so each step process inherits what is done here instead of doing it
again (and on two cores, six guard steps launched together would otherwise queue for the CPU):

- the definitions and their asset graph (`activation.definitions.prebuild`);
- Dagster's instance storage modules (`warm_instance_storage`): the first instance a process
  opens imports SQLAlchemy, Alembic and the storage classes, half a second per step process;
- Dagster's storage migration scripts, read once and shared by every schema check a step makes
  (`share_storage_migration_scripts` in activation/dagster_api.py).

Last, it freezes what it loaded (`freeze_loaded_heap`), so the steps' garbage collections leave
the inherited heap alone.

It also marks itself (`mark_step_forkserver`): a step process forked from it is a `multiprocessing`
child, but no run worker (activation/core/step_forkserver.py).

Either may fail here (an unset DAGSTER_HOME, a database that is down): the failure is swallowed
and each step does the work itself and reports any error, as it would without this module.
Nothing else in the product imports this module (tests do, to probe it).
"""

import os

import dagster as dg

from activation.core.step_forkserver import freeze_loaded_heap, mark_step_forkserver
from activation.dagster_api import share_storage_migration_scripts
from activation.definitions import prebuild


def warm_instance_storage() -> None:
    """Open and close the run's instance once, so its storage modules are imported. Nothing
    stays open (Dagster's storages connect per use), so no connection is shared across fork."""
    if not os.environ.get("DAGSTER_HOME"):
        return  # an ephemeral instance: the step processes receive its ref and open it
    try:
        with dg.DagsterInstance.get():
            pass
    except Exception:  # noqa: BLE001 - see the module docstring: the step opens its own
        return


mark_step_forkserver()
prebuild()
share_storage_migration_scripts()
warm_instance_storage()
freeze_loaded_heap()
