"""Which Dagster executor runs the steps of the code location's jobs (`activate` and
`full_resync` name it; it is the location's default for the others), chosen when the code
location loads.

    ACTIVATION_EXECUTOR=multiprocess (default)  every step in a process of the run's own host
                                                (PARALLEL_SYNCS, unchanged)
    ACTIVATION_EXECUTOR=celery                  steps queued to Celery workers (dagster-celery)
      ACTIVATION_CELERY_BROKER_URL              required: the broker, e.g. redis://:pw@host:6379/0
      ACTIVATION_CELERY_BACKEND_URL             optional: the result backend (default: the broker)

Dagster stays the engine: ordering, pools, step retries and the event log are Dagster's; Celery
only carries each step to a worker. The broker URL may hold a password, so it is never copied
into the executor's config: the config names the variable (`{"env": ...}`) and Dagster reads it
in the run worker when the run starts, so it is in no run record, tag or log.

This module imports nothing heavy (`fan_out_executor` imports the executors when called): the
code location reads the choice before it imports dagster-dbt (activation/core/step_forkserver.py).

Workers must run with the same Celery settings (`celery_worker_config`): the ones below change
what a worker does when the process running a step dies, and only the worker can apply them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from activation.lib.environment import MissingSettingError

if TYPE_CHECKING:
    import dagster as dg

EXECUTOR_VARIABLE = "ACTIVATION_EXECUTOR"
BROKER_VARIABLE = "ACTIVATION_CELERY_BROKER_URL"
BACKEND_VARIABLE = "ACTIVATION_CELERY_BACKEND_URL"
EXECUTORS = ("multiprocess", "celery")

# Celery app settings shared by the run worker (sending) and the Celery workers (executing).
# - task_acks_late + task_reject_on_worker_lost: a step whose worker process is killed (OOM,
#   SIGKILL) goes back to the queue and runs again on a live worker process. With Celery's
#   default (ack on receipt) the task's result is a WorkerLostError instead, which dagster-celery
#   turns into a failed run without a step failure, so the step's RetryPolicy never applies.
#   Running a sync step again is safe: the sync path re-attaches to the Hightouch run the killed
#   attempt triggered (activation/core/sync_path.py), it never triggers a second one.
# - worker_prefetch_multiplier 1: a worker reserves only the step it runs, so a busy worker
#   never holds a step another idle worker could start (and a lost worker loses only that one).
# - visibility_timeout (Redis and SQS brokers): a step taken by a worker that vanished entirely
#   (node lost, not just its process) is redelivered only once this has passed, and a step still
#   running past it would be delivered a second time. It must exceed the longest step: the
#   Airbyte poll timeout (3 h by default) plus margin.
CELERY_SETTINGS: dict[str, Any] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "broker_transport_options": {"visibility_timeout": 4 * 3600},
}


class ExecutorSettingError(MissingSettingError):
    """ACTIVATION_EXECUTOR names an unknown executor, or celery lacks its broker variable."""


def selected_executor() -> str:
    value = os.environ.get(EXECUTOR_VARIABLE, "").strip().lower() or "multiprocess"
    if value not in EXECUTORS:
        raise ExecutorSettingError(
            f"{EXECUTOR_VARIABLE}={value!r} is not one of {', '.join(EXECUTORS)}"
        )
    return value


def celery_executor_config() -> dict[str, Any]:
    """The celery executor's config: broker and backend as variable names, never values.

    Raises `ExecutorSettingError` naming ACTIVATION_CELERY_BROKER_URL when it is unset, so a
    code location configured for Celery without a broker fails to load rather than falling back
    to dagster-celery's default broker (an AMQP server on localhost) at run time.
    """
    if not os.environ.get(BROKER_VARIABLE, "").strip():
        raise ExecutorSettingError(
            f"{EXECUTOR_VARIABLE}=celery needs {BROKER_VARIABLE} (the Celery broker URL, e.g. "
            "redis://:password@redis:6379/0), which is not set"
        )
    backend = BACKEND_VARIABLE if os.environ.get(BACKEND_VARIABLE, "").strip() else BROKER_VARIABLE
    return {
        "broker": {"env": BROKER_VARIABLE},
        "backend": {"env": backend},
        "config_source": CELERY_SETTINGS,
    }


def celery_worker_config() -> dict[str, Any]:
    """The YAML document for `dagster-celery worker start -y FILE`: the executor's config under
    `execution.config`, so the workers listen on the run's broker with the same settings."""
    return {"execution": {"config": celery_executor_config()}}


# Dagster's step priority tag (documented for ops and assets): executors that launch steps
# themselves (multiprocess, in-process, Kubernetes step jobs) start a run's ready steps highest
# priority first.
PRIORITY_TAG = "dagster/priority"


def launch_priority_tags(waiting_behind: int) -> dict[str, str]:
    """Op tags that launch a step before the run's other ready steps when `waiting_behind`
    syncs wait on it in line (`activation.lib.destinations.syncs_waiting_behind`); none
    otherwise, and none under Celery.

    Why: the steps a run makes ready together (six guard checks after dbt, then the syncs) start
    in step-key order and share the cores. A sync others wait on, and the check gating it, start
    first instead, so the line of syncs behind it (Salesforce contacts after accounts, the run's
    longest path) starts sooner; the run's other steps still start at once beside it.

    Under Celery the workers take steps from the broker; dagster-celery ignores this tag and
    warns about it in every run (it reads its own, which is also the broker message's priority),
    so it is left off there.
    """
    if waiting_behind <= 0 or selected_executor() == "celery":
        return {}
    return {PRIORITY_TAG: str(waiting_behind)}


def fan_out_executor() -> dg.ExecutorDefinition:
    """The executor of the jobs that run one sync step per destination."""
    if selected_executor() == "celery":
        # Imported here: dagster-celery is an optional dependency (`pip install
        # 'activation[celery]'`), needed only where Celery is selected.
        from dagster_celery import celery_executor

        return celery_executor.configured(celery_executor_config(), name="celery_syncs")
    from activation.components.hightouch_syncs import PARALLEL_SYNCS

    return PARALLEL_SYNCS
