"""The dbt build's target folders: where each one goes, what it starts with, and how many stay
on disk.

dagster-dbt gives every `dbt build` of a run its own target folder,
`<dbt target>/dbt_build-<run id prefix>-<random>/`, so a run's artifacts (dbt.log, the compiled
SQL, manifest.json, run_results.json) are never overwritten by the next run's. It never removes
them: about 4 MB per run here, half of it dbt's debug log, so a host whose sensors launch a run
every few minutes fills its disk by gigabytes a week. (A run in its own container, as with the
Kubernetes run launcher, leaves nothing behind anyway.)

After each build the dbt step removes the folders of earlier builds beyond the newest
`ACTIVATION_DBT_ARTIFACT_RUNS_KEPT` (default 50): enough to read back the logs of the last day's
runs. It never removes:
- the folder of the build that just ran;
- a folder touched within the last hour (the build of a run still in progress: dbt appends to its
  dbt.log while it runs);
- anything not named as dagster-dbt names the step's folders (the static manifest, a target of
  another warehouse, a folder a user put there), and no symbolic link, nor what one points to.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from activation.lib.environment import MissingSettingError

KEPT_VARIABLE = "ACTIVATION_DBT_ARTIFACT_RUNS_KEPT"
DEFAULT_KEPT = 50
IN_PROGRESS_SECONDS = 3600.0
# dagster-dbt: f"{op name}-{run_id[:7]}-{str(uuid4())[:7]}"; run ids and uuids are lower-case hex.
_INVOCATION_FOLDER = re.compile(r"^(?P<op>[A-Za-z0-9_]+)-[0-9a-f]{7}-[0-9a-f]{7}$")


PARTIAL_PARSE_FILE = "partial_parse.msgpack"


def seeded_build_folder(
    project_dir: Path, prepared_target: Path, op_name: str, run_id: str
) -> Path:
    """A new target folder for one dbt build, named and placed as dagster-dbt places its own
    (`<$DBT_TARGET_PATH or target>/<op>-<run id[:7]>-<7 random>`), holding a copy of the
    partial parse that `activation prepare` wrote into `prepared_target`.

    dagster-dbt copies a partial parse into each build's folder only from `target/` (or
    `$DBT_TARGET_PATH`). That is where `activation prepare` wrote it only for the default duckdb
    target: for postgres (`target/postgres/`), and in a process with its own
    ACTIVATION_DBT_TARGET_PATH (each test worker), dbt found none and parsed the whole project
    again on every build, about 3.5 s of CPU. dbt checks the copy before it uses it (profile,
    variables, every file's hash) and parses in full when anything differs, so a stale copy
    costs time, never a wrong manifest.
    """
    base = Path(os.environ.get("DBT_TARGET_PATH", "").strip() or "target")
    folder = (base if base.is_absolute() else project_dir / base) / (
        f"{op_name}-{run_id[:7]}-{str(uuid.uuid4())[:7]}"
    )
    folder.mkdir(parents=True, exist_ok=False)
    prepared = (
        prepared_target if prepared_target.is_absolute() else project_dir / prepared_target
    ) / PARTIAL_PARSE_FILE
    # Nothing prepared for this target: dbt parses in full, as it would have anyway.
    with contextlib.suppress(FileNotFoundError):
        shutil.copyfile(prepared, folder / PARTIAL_PARSE_FILE)
    return folder


class ArtifactSettingError(MissingSettingError):
    """ACTIVATION_DBT_ARTIFACT_RUNS_KEPT is not a positive whole number."""


def runs_kept() -> int:
    """The setting, read when the dbt step starts, before dbt runs: a malformed value fails the
    step before any model is built, naming the variable."""
    raw = os.environ.get(KEPT_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_KEPT
    try:
        kept = int(raw)
    except ValueError:
        kept = 0
    if kept < 1:
        raise ArtifactSettingError(
            f"{KEPT_VARIABLE}={raw!r}: expected how many runs' dbt artifacts to keep, a whole "
            f"number of at least 1 (default {DEFAULT_KEPT})"
        )
    return kept


def _last_touched(folder: Path) -> float:
    """The folder's newest change: an entry added to it, or dbt appending to its log."""
    times = [folder.lstat().st_mtime]
    log = folder / "dbt.log"
    if log.is_file():
        times.append(log.stat().st_mtime)
    return max(times)


def prune_earlier_builds(current: Path, kept: int, now: float | None = None) -> list[Path]:
    """Remove the target folders of the step's earlier builds beyond the newest `kept`
    (`current`, the folder of the build that just ran, counts as one and is never removed).
    Returns what was removed. A folder another process removes first is skipped."""
    match = _INVOCATION_FOLDER.match(current.name)
    if match is None:
        return []  # not a folder dagster-dbt named: nothing here is known to be the step's
    now = time.time() if now is None else now
    candidates: list[tuple[float, Path]] = []
    for entry in current.parent.iterdir():
        named = _INVOCATION_FOLDER.match(entry.name)
        if entry == current or named is None or named["op"] != match["op"]:
            continue
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            candidates.append((_last_touched(entry), entry))
        except FileNotFoundError:
            continue
    candidates.sort(reverse=True)
    removed = []
    for touched, folder in candidates[max(kept - 1, 0) :]:
        if now - touched < IN_PROGRESS_SECONDS:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
