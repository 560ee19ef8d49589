"""Launchpad forms that refuse a mistake before the run exists.

A job whose form is a `dg.Config` takes it through a `@dg.config_mapping`: the job's run config
is the form itself (what the Launchpad shows, with each field's description), and the mapping
checks it before Dagster creates the run. A mistake raises `FormRefused`, a
`dg.DagsterInvalidConfigError` naming each field and its valid values, so `execute_in_process`
and a Launchpad launch both fail with no run, no step and no pool slot taken. A usable form is
handed, as is, to the ops that read it.

The mapping only refuses: the ops still check what they rely on, and every sync still passes the
quality gate and holds its destination's pool inside its op.

    @dg.config_mapping
    def request_form(config: ResyncRequest) -> dict:
        return mapped_form(JOB, config, config.problems(keys), ["resync_request"])

    job = graph.to_job(name=JOB, config=refuse_field_errors(JOB, request_form))

`refuse_field_errors` turns what Dagster's own building of the form rejects (a value emptied in
the Launchpad's YAML arrives as null) into the same refusal, naming the field.
"""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
from pydantic import ValidationError


class FormRefused(dg.DagsterInvalidConfigError):
    """A job's form cannot run; the message names each field and what it may be."""

    def __init__(self, job_name: str, problems: Sequence[str], form: object = None) -> None:
        self.job_name = job_name
        self.problems = tuple(problems)
        listed = "; ".join(self.problems)
        super().__init__(f"The {job_name} form is invalid: {listed}. No run was created.", [], form)

    def __reduce__(self) -> tuple[Any, ...]:  # the base's __init__ takes other arguments
        return (type(self), (self.job_name, self.problems, self.config_value))


def valid_values(values: Iterable[object], none: str = "(none declared)") -> str:
    """`valid: a, b, c` for a message (`none` when there is nothing to choose)."""
    return "valid: " + (", ".join(str(v) for v in values) or none)


def unknown_value(field: str, value: object, what: str, valid: Iterable[object]) -> str:
    """`destination: 'x' is not a declared destination; valid: a, b`."""
    return f"{field}: {value!r} is not {what}; {valid_values(valid)}"


def blank_fields(form: dg.Config, *names: str) -> list[str]:
    """`reason: must not be empty` for each named text field that is empty or only spaces."""
    return [f"{name}: must not be empty" for name in names if not str(getattr(form, name)).strip()]


def mapped_form(
    job_name: str, form: dg.Config, problems: Sequence[str], op_names: Iterable[str]
) -> dict[str, Any]:
    """What a job's form mapping returns: the form's values as the config of each op in
    `op_names`; raises `FormRefused` instead when `problems` names any."""
    if problems:
        raise FormRefused(job_name, problems, form.model_dump())
    values = form.model_dump()
    return {"ops": {name: {"config": values} for name in op_names}}


def refuse_field_errors(job_name: str, mapping: dg.ConfigMapping) -> dg.ConfigMapping:
    """`mapping` (a `@dg.config_mapping` on a `dg.Config` form), where a field the form's model
    rejects is refused with `FormRefused` like any other problem, instead of crashing the
    mapping with a pydantic error."""

    def config_fn(values: Mapping[str, Any]) -> Any:
        try:
            return mapping.config_fn(values)
        except ValidationError as error:
            found = [
                f"{'.'.join(str(part) for part in e['loc']) or '(form)'}: {e['msg']}"
                for e in error.errors()
            ]
            raise FormRefused(job_name, found, dict(values)) from None

    return dg.ConfigMapping(
        config_fn=config_fn,
        config_schema=mapping.config_schema,
        receive_processed_config_values=mapping.receive_processed_config_values,
    )
