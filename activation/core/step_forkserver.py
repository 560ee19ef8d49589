"""The forkserver a run's step processes fork from: what it preloads, and which process starts
it early. Recognising the process that executes a run lets the code location do two things there
and nowhere else (`activation/definitions.py`):

- **Build its definitions once.** Dagster reconstructs the code location several times in the
  process that executes a run: five calls of the definitions function under `dagster job
  execute`, half a second each on two cores. A run's definitions cannot change under it, so the
  first build serves the others.
- **Start the step processes' forkserver before the definitions load.** The multiprocess
  executor starts it only when the first step launches, after the run worker has loaded; it then
  imports and builds the code location itself (3 s on two cores) while the run waits. Started
  first, it loads beside the run worker instead of after it. (`activation/definitions.py` imports
  nothing heavy at module level so that this comes before dbt and the code location's modules
  are imported.)

A code server, the webserver, the daemon and tests are not such a process: there every load
builds afresh (a reload must see new files) and no forkserver starts.

How a run-executing process is recognised (public facts only, no Dagster internals):
- the default run launcher's run worker is a `multiprocessing` child of the code server (its
  gRPC `start_run` spawns it);
- the run worker of the Docker and Kubernetes run launchers runs `dagster api execute_run`;
- `dagster job execute` executes the run in the CLI's own process.
Which job the run is for is not known while the definitions load, so the run worker of a job on
the in-process executor (`resync_destination`) starts a forkserver too and leaves it unused: a
few seconds of CPU beside the run, and the forkserver's memory until the run ends. With
ACTIVATION_EXECUTOR=celery no forkserver starts (the steps run on Celery workers).

A step process of the run is a `multiprocessing` child too, but it forks from a forkserver that
marked itself (`mark_step_forkserver`), so it is not taken for a run worker.

Both the run-executing process and the forkserver then freeze what they loaded
(`freeze_loaded_heap`): it lives as long as they do, so the cyclic garbage collector need not
scan it again.
"""

from __future__ import annotations

import gc
import multiprocessing
import multiprocessing.forkserver
import sys

# Set in a step forkserver, and so in every step process forked from it (a fork inherits memory).
_in_step_forkserver = False
RUN_COMMANDS = (("api", "execute_run"), ("job", "execute"))

# What the forkserver imports before forking any step (the multiprocess executor's
# `preload_modules`, activation/components/hightouch_syncs.py).
STEP_PRELOAD_MODULES = (
    "activation.definitions",
    "activation.defs.ingest.airbyte",
    "activation.defs.transform.dbt",
    "activation.components.hightouch_syncs",
    # last: marks the forkserver, builds the definitions once for every step of the run
    "activation.tooling.forkserver_preload",
)


def executes_a_run() -> bool:
    """Whether this process executes a Dagster run itself (its orchestration, not one step)."""
    if _in_step_forkserver:
        return False
    if tuple(sys.argv[1:3]) in RUN_COMMANDS:
        return True
    return multiprocessing.parent_process() is not None


def mark_step_forkserver() -> None:
    """Called in a step forkserver: it and every step process forked from it are no run worker."""
    global _in_step_forkserver
    _in_step_forkserver = True


def start_step_forkserver() -> None:
    """Start `multiprocessing`'s forkserver now, preloading `STEP_PRELOAD_MODULES` (the modules
    the multiprocess executor's config names). The executor finds it running when it launches the
    first step and forks every step from it: `multiprocessing` keeps one forkserver per process.

    It starts in the background (this returns at once) with this process's environment, which is
    what the executor would have started it with. It exits when this process does. A second call
    finds it running and does nothing."""
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(STEP_PRELOAD_MODULES))
    multiprocessing.forkserver.ensure_running()


def freeze_loaded_heap() -> None:
    """Exempt every object alive now (Dagster, dbt, the built definitions: some 275,000 objects
    the collector tracks) from the cyclic garbage collector for the rest of this process
    (`gc.freeze`, public since Python 3.7). Called where the loaded code location is kept until
    the process exits: the process that executes a run, and the step forkserver.

    - Interpreter exit no longer scans them: `dagster job execute` exited 0.85 s after its run
      had ended, and 0.04 s with them frozen.
    - No full collection during the run rescans them.
    - In the forkserver it is what the `gc` documentation advises before forking: a step's
      collections then leave the inherited pages alone (no copy-on-write of the whole heap).

    Reference counting still frees what is dropped; only a reference cycle among these objects
    would stay in memory, which for objects kept to the end changes nothing. Never called where
    definitions are rebuilt at every load (a code server)."""
    gc.freeze()
