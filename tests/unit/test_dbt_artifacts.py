"""Which earlier dbt builds' target folders the dbt step removes, on a real folder tree."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from activation.core.dbt_artifacts import (
    DEFAULT_KEPT,
    IN_PROGRESS_SECONDS,
    KEPT_VARIABLE,
    PARTIAL_PARSE_FILE,
    ArtifactSettingError,
    prune_earlier_builds,
    runs_kept,
    seeded_build_folder,
)

NOW = time.time()
HOUR = 3600.0


def _build_folder(base: Path, name: str, age: float, log_age: float | None = None) -> Path:
    folder = base / name
    (folder / "compiled").mkdir(parents=True)
    (folder / "compiled" / "model.sql").write_text("select 1")
    log = folder / "dbt.log"
    log.write_text("{}\n")
    os.utime(log, (NOW - (age if log_age is None else log_age),) * 2)
    os.utime(folder, (NOW - age,) * 2)
    return folder


def test_keeps_the_newest_builds_and_removes_the_older_ones(tmp_path: Path) -> None:
    current = _build_folder(tmp_path, "dbt_build-0000000-aaaaaaa", age=0)
    earlier = [
        _build_folder(tmp_path, f"dbt_build-{i:07x}-bbbbbbb", age=(2 + i) * HOUR)
        for i in range(1, 6)
    ]
    removed = prune_earlier_builds(current, kept=3, now=NOW)
    # current + the two newest earlier builds stay; the three oldest go
    assert sorted(removed) == sorted(earlier[2:])
    assert [f.exists() for f in earlier] == [True, True, False, False, False]
    assert (current / "compiled" / "model.sql").exists()


def test_never_removes_the_build_that_just_ran_even_when_it_is_the_oldest(tmp_path: Path) -> None:
    current = _build_folder(tmp_path, "dbt_build-0000000-aaaaaaa", age=10 * HOUR)
    newer = _build_folder(tmp_path, "dbt_build-1111111-bbbbbbb", age=2 * HOUR)
    assert prune_earlier_builds(current, kept=1, now=NOW) == [newer]
    assert current.exists()


def test_a_build_still_writing_its_log_is_not_removed(tmp_path: Path) -> None:
    """A long build of another run: its folder is old, its dbt.log was appended a minute ago."""
    current = _build_folder(tmp_path, "dbt_build-0000000-aaaaaaa", age=0)
    running = _build_folder(tmp_path, "dbt_build-1111111-bbbbbbb", age=5 * HOUR, log_age=60)
    recent = _build_folder(tmp_path, "dbt_build-2222222-ccccccc", age=IN_PROGRESS_SECONDS / 2)
    old = _build_folder(tmp_path, "dbt_build-3333333-ddddddd", age=5 * HOUR)
    assert prune_earlier_builds(current, kept=1, now=NOW) == [old]
    assert running.exists() and recent.exists()


def test_leaves_what_dagster_dbt_did_not_name_for_this_step(tmp_path: Path) -> None:
    current = _build_folder(tmp_path, "dbt_build-0000000-aaaaaaa", age=0)
    other_step = _build_folder(tmp_path, "other_op-1111111-bbbbbbb", age=9 * HOUR)
    users = _build_folder(tmp_path, "dbt_build-backup", age=9 * HOUR)
    postgres = _build_folder(tmp_path, "postgres", age=9 * HOUR)
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    os.utime(manifest, (NOW - 9 * HOUR,) * 2)
    assert prune_earlier_builds(current, kept=1, now=NOW) == []
    assert all(p.exists() for p in (other_step, users, postgres, manifest))


def test_a_symbolic_link_named_like_a_build_is_not_followed(tmp_path: Path) -> None:
    base = tmp_path / "target"
    base.mkdir()
    current = _build_folder(base, "dbt_build-0000000-aaaaaaa", age=0)
    outside = _build_folder(tmp_path, "elsewhere", age=9 * HOUR)
    link = base / "dbt_build-1111111-bbbbbbb"
    link.symlink_to(outside, target_is_directory=True)
    os.utime(link, (NOW - 9 * HOUR,) * 2, follow_symlinks=False)
    assert prune_earlier_builds(current, kept=1, now=NOW) == []
    assert link.is_symlink() and (outside / "compiled" / "model.sql").exists()


def test_a_folder_removed_meanwhile_by_another_run_is_skipped(tmp_path: Path) -> None:
    """Another run's dbt step prunes the same folder at the same time and wins the race, right
    after this one saw it: it is skipped, and the other old folder is still removed."""
    current = _build_folder(tmp_path, "dbt_build-0000000-aaaaaaa", age=0)
    gone = _build_folder(tmp_path, "dbt_build-1111111-bbbbbbb", age=9 * HOUR)
    other = _build_folder(tmp_path, "dbt_build-2222222-ccccccc", age=10 * HOUR)
    real_is_dir = Path.is_dir

    def is_dir_then_removed(self: Path) -> bool:
        answer = real_is_dir(self)
        if self == gone and answer:
            shutil.rmtree(gone)
        return answer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "is_dir", is_dir_then_removed)
        assert prune_earlier_builds(current, kept=1, now=NOW) == [other]
    assert current.exists() and not gone.exists() and not other.exists()


def test_a_folder_not_named_by_dagster_dbt_prunes_nothing(tmp_path: Path) -> None:
    """An explicit target path (as `activation prepare` passes for `dbt parse`) is no build
    folder of a run: nothing beside it is known to be the step's."""
    current = _build_folder(tmp_path, "target", age=0)
    other = _build_folder(tmp_path, "dbt_build-1111111-bbbbbbb", age=9 * HOUR)
    assert prune_earlier_builds(current, kept=1, now=NOW) == []
    assert other.exists()


def test_the_setting_defaults_and_reads_a_whole_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEPT_VARIABLE, raising=False)
    assert runs_kept() == DEFAULT_KEPT
    monkeypatch.setenv(KEPT_VARIABLE, " 7 ")
    assert runs_kept() == 7


@pytest.mark.parametrize("raw", ["0", "-3", "ten", "2.5"])
def test_a_malformed_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(KEPT_VARIABLE, raw)
    with pytest.raises(ArtifactSettingError, match=f"{KEPT_VARIABLE}={raw!r}"):
        runs_kept()


# -- seeded_build_folder ---------------------------------------------------------------------------


def _prepared(project: Path, target: str) -> bytes:
    folder = project / target
    folder.mkdir(parents=True)
    state = os.urandom(64)
    (folder / PARTIAL_PARSE_FILE).write_bytes(state)
    return state


def test_a_build_folder_holds_its_targets_prepared_parse_and_is_named_as_dagster_dbt_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DBT_TARGET_PATH", raising=False)
    duckdb_state = _prepared(tmp_path, "target")
    postgres_state = _prepared(tmp_path, "target/postgres")

    folder = seeded_build_folder(tmp_path, Path("target/postgres"), "dbt_build", "0123456789abc")

    assert folder.parent == tmp_path / "target"  # beside dagster-dbt's own, whatever the target
    assert folder.name.startswith("dbt_build-0123456-")
    assert (folder / PARTIAL_PARSE_FILE).read_bytes() == postgres_state != duckdb_state
    # The step's own pruning knows it as one of its builds.
    assert prune_earlier_builds(folder, kept=1) == []
    assert seeded_build_folder(tmp_path, Path("target/postgres"), "dbt_build", "0123456789abc") != (
        folder
    )


def test_a_build_folder_follows_dbt_target_path_and_starts_empty_when_nothing_was_prepared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    monkeypatch.setenv("DBT_TARGET_PATH", str(elsewhere))

    folder = seeded_build_folder(tmp_path, Path("target/gw9"), "dbt_build", "fedcba9876543")

    assert folder.parent == elsewhere
    assert folder.is_dir() and not (folder / PARTIAL_PARSE_FILE).exists()  # dbt parses in full
