"""Tests of fgmm_lib.runs.folder: atomic writes of files and folders, leftovers, permissions, output checks."""

from __future__ import annotations

import json
import os
import stat

import pytest

from fgmm_lib.io import (
    check_writable_file,
    check_writable_folder,
    clean_leftovers,
    partial_folder,
    replace_folder,
    write_atomic,
    write_json,
)
from fgmm_lib.runs.folder import is_run_folder


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_write_atomic_keeps_the_old_file_on_failure_and_leaves_nothing(tmp_path):
    target = write_json(tmp_path / "deep" / "a.json", {"b": 1, "a": 2})
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}

    def fail(path):
        path.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(target, fail)
    assert json.loads(target.read_text()) == {"a": 2, "b": 1}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_write_atomic_keeps_the_extension_for_format_sniffing_writers(tmp_path):
    seen = []
    write_atomic(tmp_path / "plot.png", lambda path: (seen.append(path.suffix), path.write_bytes(b"x")))
    assert seen == [".png"]


def test_written_files_are_readable_by_others(tmp_path, umask_022):
    """mkstemp creates 0600 files; a shared results folder must stay readable to colleagues."""
    path = write_json(tmp_path / "metrics.json", {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    folder = partial_folder(tmp_path / "data")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755


def test_replace_folder_swaps_whole_folders(tmp_path):
    out = tmp_path / "data"
    first = partial_folder(out)
    (first / "a").write_text("1")
    replace_folder(first, out)
    second = partial_folder(out)
    (second / "b").write_text("2")
    replace_folder(second, out)
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing hidden left


def test_leftovers_of_killed_writers_are_cleaned_at_the_next_write(tmp_path):
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    killed_generate = tmp_path / ".data.abc123.partial"
    killed_generate.mkdir()
    (killed_generate / "frames.npy").write_bytes(b"0" * 100)
    killed_checkpoint = out / ".checkpoint.pt.xyz.tmp.pt"
    killed_checkpoint.write_bytes(b"")
    unrelated = tmp_path / ".other.abc.partial"
    unrelated.mkdir()
    removed = clean_leftovers(out)
    assert set(removed) == {killed_generate, killed_checkpoint}
    assert not killed_generate.exists() and not killed_checkpoint.exists()
    assert unrelated.exists() and (out / "keep.txt").read_text() == "mine"
    # partial_folder cleans before it starts
    killed_generate.mkdir()
    partial = partial_folder(out)
    assert not killed_generate.exists() and partial.exists()


def test_output_checks_name_the_path(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="metrics file .*a_file/m.json"):
        check_writable_file(blocker / "m.json", "metrics file")
    with pytest.raises(ValueError, match="is a folder"):
        check_writable_file(tmp_path, "metrics file")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        check_writable_folder(blocker, "TrainConfig.out")
    assert check_writable_folder(tmp_path / "new" / "run").is_dir()
    assert not list((tmp_path / "new" / "run").iterdir())


def test_is_run_folder(tmp_path):
    assert not is_run_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"train": {}}))
    assert is_run_folder(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert not is_run_folder(tmp_path)
