"""How long the code location takes to load: a generated 100-model / 20-destination project, and
the demo project. Not a test: it prints figures (target: under 2 s with a prepared manifest).

Run: `.venv/bin/python benchmarks/bench_load.py [REPEATS] [--destinations N]` (default 5 repeats
per project, 20 destinations in the generated declaration; `--destinations 200` is the scale
benchmark's declaration, benchmarks/bench_scale.py).

For each project it prepares the dbt manifest first (`activation prepare`, as an image build
would), starts a sandbox and stores its Airbyte listing (`activation refresh`), then stops the
sandbox (loading calls no service), and loads the code location in a fresh Python process per
repeat, reporting the median:

- import: `import activation.definitions` (Dagster and the light modules only: the module
  imports nothing heavy, so a run worker starts the step forkserver first; see
  activation/core/step_forkserver.py);
- build: `build_definitions()` plus resolving the repository (the asset graph, jobs, checks),
  which is what a code server does before it answers; includes importing dagster-dbt (without
  dbt-core: activation/dbt_out_of_process.py), dagster-airbyte and the concerns' modules,
  reading the manifest and the stored Airbyte listing;
- process: the whole child process, interpreter start and exit included.

The generated project keeps the demo's sources, staging models and five marts (so every module
that names a demo mart still finds it) and adds 71 intermediate models and 20 marts, 100 models
in all, with tests on each; 15 more destinations read generated marts, 20 in all.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from activation.lib.paths import DBT_PROJECT_DIR, DEFAULT_DESTINATIONS_FILE, PROJECT_ROOT
from activation.sandbox.launcher import start_sandbox

INTERMEDIATE_MODELS = 71
GENERATED_MARTS = 20
GENERATED_DESTINATIONS = 15
DESTINATION_TYPES = (
    ("salesforce", "Contact"),
    ("hubspot", "contacts"),
    ("iterable", "users"),
    ("braze", "users"),
)
EVENT_TYPES = ("page_view", "login", "purchase", "feature_used")

LOAD_SCRIPT = """
import json, time
started = time.perf_counter()
import activation.definitions as module
imported = time.perf_counter()
definitions = module.build_definitions()
repository = definitions.get_repository_def()
assets = len(repository.asset_graph.get_all_asset_keys())
checks = len(repository.asset_graph.asset_check_keys)
built = time.perf_counter()
print(json.dumps({"import": imported - started, "build": built - imported, "assets": assets,
                  "checks": checks}))
"""


def generate_project(folder: Path) -> Path:
    """A dbt project of 100 models: the demo's 9, 71 intermediate models and 20 marts."""
    project = folder / "dbt_project"
    shutil.copytree(
        DBT_PROJECT_DIR,
        project,
        ignore=shutil.ignore_patterns("target", "logs", "dbt_packages", "*.duckdb"),
    )
    intermediate = project / "models" / "intermediate"
    marts = project / "models" / "marts"
    intermediate.mkdir()
    schema: list[dict] = []
    for n in range(1, INTERMEDIATE_MODELS + 1):
        # Chains of five: each model refines the one before it, as real projects layer CTEs.
        if n % 5 == 1:
            event = EVENT_TYPES[n % len(EVENT_TYPES)]
            body = (
                "select customer_id, count(*) as metric_value, max(occurred_at) as last_seen_at\n"
                f"from {{{{ ref('stg_events') }}}}\nwhere event_type = '{event}'\n"
                "group by customer_id\n"
            )
        else:
            body = (
                f"select customer_id, metric_value + {n} as metric_value, last_seen_at\n"
                f"from {{{{ ref('int_metric_{n - 1:03d}') }}}}\n"
            )
        (intermediate / f"int_metric_{n:03d}.sql").write_text(body)
        schema.append(
            {"name": f"int_metric_{n:03d}", "columns": [_tested("customer_id", "not_null")]}
        )
    (intermediate / "_intermediate.yml").write_text(
        yaml.safe_dump({"version": 2, "models": schema})
    )
    mart_schema: list[dict] = []
    for n in range(1, GENERATED_MARTS + 1):
        metric = f"int_metric_{1 + (n * 7) % INTERMEDIATE_MODELS:03d}"
        (marts / f"mart_generated_{n:02d}.sql").write_text(
            "select customers.customer_id, customers.email, customers.first_name,\n"
            "    coalesce(metric.metric_value, 0) as metric_value\n"
            "from {{ ref('stg_customers') }} as customers\n"
            f"left join {{{{ ref('{metric}') }}}} as metric\n"
            "    on metric.customer_id = customers.customer_id\n"
        )
        mart_schema.append(
            {
                "name": f"mart_generated_{n:02d}",
                "columns": [
                    _tested("customer_id", "unique", "not_null"),
                    _tested("email", "not_null"),
                    # Every mapped column is declared: definitions refuse one the manifest lacks.
                    {"name": "first_name"},
                    {"name": "metric_value"},
                ],
            }
        )
    (marts / "_generated.yml").write_text(yaml.safe_dump({"version": 2, "models": mart_schema}))
    return project


def _tested(column: str, *tests: str) -> dict:
    return {"name": column, "data_tests": list(tests)}


def generate_destinations(folder: Path, count: int = 5 + GENERATED_DESTINATIONS) -> Path:
    """The demo's five destinations plus `count - 5` reading generated marts (in turn)."""
    declared = yaml.safe_load(DEFAULT_DESTINATIONS_FILE.read_text())
    for n in range(1, count - len(declared["destinations"]) + 1):
        destination_type, object_name = DESTINATION_TYPES[n % len(DESTINATION_TYPES)]
        declared["destinations"].append(
            {
                "key": f"generated_{n:02d}",
                "destination_type": destination_type,
                "object": object_name,
                "sync_id": str(9000 + n),
                "mart": f"mart_generated_{1 + (n - 1) % GENERATED_MARTS:02d}",
                "primary_key": "customer_id",
                "mapped_columns": ["email", "first_name", "metric_value"],
                "owner": {
                    "team": "growth",
                    "slack_channel": "#growth-alerts",
                    "pagerduty_routing_key_env": "PAGERDUTY_ROUTING_KEY_GROWTH",
                },
            }
        )
    path = folder / "destinations.yaml"
    path.write_text(yaml.safe_dump(declared, sort_keys=False))
    return path


def _run(command: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def measure(name: str, folder: Path, overrides: dict[str, str], repeats: int) -> None:
    """Prepare the manifest, start a sandbox, load the code location `repeats` times."""
    env = {
        **os.environ,
        **overrides,
        "ACTIVATION_DATA_DIR": str(folder / "data"),
        "ACTIVATION_DBT_TARGET": "duckdb",
        "DO_NOT_TRACK": "1",
        "HIGHTOUCH_API_TOKEN": "bench-token",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    started = time.perf_counter()
    _run([sys.executable, "-m", "activation.tooling.cli", "prepare"], env)
    prepare_seconds = time.perf_counter() - started
    saved = dict(os.environ)
    os.environ.update(env)  # the sandbox reads the destinations file from the environment
    try:
        sandbox = start_sandbox(folder / "data")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        env["ACTIVATION_SANDBOX_URL"] = sandbox.url
        _run([sys.executable, "-m", "activation.tooling.cli", "refresh"], env)
    finally:
        sandbox.stop()  # from here on nothing answers: the load must not need it
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        figures = json.loads(_run([sys.executable, "-c", LOAD_SCRIPT], env).splitlines()[-1])
        figures["process"] = time.perf_counter() - began
        samples.append(figures)
    medians = {k: statistics.median(s[k] for s in samples) for k in ("import", "build", "process")}
    loaded = medians["import"] + medians["build"]
    print(
        f"{name}: {samples[0]['assets']} assets, {samples[0]['checks']} checks | manifest prepared "
        f"in {prepare_seconds:.1f} s | load median of {repeats}: import {medians['import']:.2f} s "
        f"+ build {medians['build']:.2f} s = {loaded:.2f} s (whole process "
        f"{medians['process']:.2f} s) | target < 2 s: {'met' if loaded < 2 else 'NOT met'}"
    )


def main(repeats: int, destination_count: int) -> None:
    with tempfile.TemporaryDirectory(prefix="activation-bench-load-") as temporary:
        folder = Path(temporary)
        project = generate_project(folder / "generated")
        destinations = generate_destinations(folder / "generated", destination_count)
        models = len(list(project.glob("models/**/*.sql")))
        measure(
            f"generated project ({models} models, {destination_count} destinations)",
            folder / "generated",
            {
                "ACTIVATION_DBT_PROJECT_DIR": str(project),
                "ACTIVATION_DESTINATIONS_FILE": str(destinations),
            },
            repeats,
        )
        demo = folder / "demo"
        demo.mkdir()
        measure("demo project (9 models, 5 destinations)", demo, {}, repeats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=5)
    parser.add_argument("--destinations", type=int, default=5 + GENERATED_DESTINATIONS)
    arguments = parser.parse_args()
    main(arguments.repeats, arguments.destinations)
