"""What a user can break from the command line: every failure is one line naming the file, field or
value (no traceback), nothing of theirs is lost, and killed writers leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fgmm_lib.cli import main as cli
from fgmm_lib.data.generate import GenerationConfig, generate_dataset

pytestmark = pytest.mark.integration

TINY = ["--clips", "40", "--frames", "4", "--size", "16", "--distractors", "0"]
CLEAN = dict(distractors=0, filler_words=0.0, misaligned_frames=0.0, mismatched_narration=0.0)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    pretrain = generate_dataset(GenerationConfig(clips=48, frames=4, size=32, seed=0), root / "pretrain",
                                progress=False)
    evaluation = generate_dataset(GenerationConfig(clips=60, frames=4, size=32, seed=1, test_fraction=0.5, **CLEAN),
                                  root / "eval", vocab=pretrain / "vocab.json", progress=False)
    other_shape = generate_dataset(GenerationConfig(clips=60, frames=6, size=32, seed=1, test_fraction=0.5, **CLEAN),
                                   root / "eval_t6", vocab=pretrain / "vocab.json", progress=False)
    code = cli.main(["pretrain", "--data", str(pretrain), "--out", str(root / "run"), "--loss", "attention",
                     "--batch-size", "8", "--epochs", "1", "--dim", "16", "--width", "0.25", "--device", "cpu",
                     "--quiet"])
    assert code == 0
    return {"root": root, "pretrain": pretrain, "eval": evaluation, "eval_t6": other_shape, "run": root / "run"}


def copy_dataset(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# ------------------------------------------------------------------------------ data lost or corrupted


def test_generate_refuses_a_folder_with_the_users_files(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "params.json").write_text("{}")
    (mine / "notes.txt").write_text("my notes")
    (mine / "sub" / "code.py").write_text("print(1)")
    code, _, err = run_cli(capsys, "generate", "--out", str(mine), "--quiet", *TINY)
    assert code == 2
    one_line_error(err, str(mine), "notes.txt")
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / "sub" / "code.py").is_file()


def test_generate_replaces_its_own_dataset_folder(tmp_path, capsys):
    out = tmp_path / "data"
    assert run_cli(capsys, "generate", "--out", str(out), "--quiet", *TINY)[0] == 0
    assert run_cli(capsys, "generate", "--out", str(out), "--quiet", *TINY, "--seed", "3")[0] == 0
    assert json.loads((out / "params.json").read_text())["seed"] == 3


def test_pretrain_refuses_to_write_into_a_dataset_folder(world, tmp_path, capsys):
    data = copy_dataset(world["pretrain"], tmp_path / "data")
    vocab_before = (data / "vocab.json").read_bytes()
    code, _, err = run_cli(capsys, "pretrain", "--data", str(data), "--out", str(data), "--batch-size", "8",
                           "--epochs", "1", "--dim", "16", "--width", "0.25", "--quiet")
    assert code == 2
    one_line_error(err, str(data), "frames.npy")
    assert (data / "vocab.json").read_bytes() == vocab_before


# ------------------------------------------------------------------------------ silent before, loud now


def test_a_vocabulary_that_lacks_the_narrations_words_is_an_error(world, tmp_path, capsys):
    data = copy_dataset(world["pretrain"], tmp_path / "data")
    words = json.loads((data / "vocab.json").read_text())["words"]
    (data / "vocab.json").write_text(json.dumps({"words": words[:2] + [w for w in words[2:] if w != "the"]}))
    code, _, err = run_cli(capsys, "pretrain", "--data", str(data), "--out", str(tmp_path / "run"),
                           "--batch-size", "8", "--epochs", "1", "--dim", "16", "--quiet")
    assert code == 2
    one_line_error(err, "vocab.json", "the")


def test_evaluate_refuses_data_of_another_clip_shape(world, tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", "--run", str(world["run"]), "--data", str(world["eval_t6"]),
                           "--quiet")
    assert code == 2
    one_line_error(err, "params.json", "frames=6", "frames=4")


def test_evaluate_refuses_a_probe_trained_and_tested_on_one_split(world, capsys):
    code, _, err = run_cli(capsys, "evaluate", "--run", str(world["run"]), "--data", str(world["eval"]),
                           "--split", "test", "--probe-split", "test", "--quiet")
    assert code == 2
    one_line_error(err, "probe_split", "'test'")


def test_params_json_that_does_not_describe_its_data_is_an_error(world, tmp_path, capsys):
    data = copy_dataset(world["eval"], tmp_path / "data")
    params = json.loads((data / "params.json").read_text())
    (data / "params.json").write_text(json.dumps({**params, "clips": params["clips"] + 5}))
    code, _, err = run_cli(capsys, "evaluate", "--run", str(world["run"]), "--data", str(data), "--quiet")
    assert code == 2
    one_line_error(err, "params.json", "clips=")


@pytest.mark.parametrize(
    ("change", "needles"),
    [
        (lambda row: {**row, "split": "TRAIN"}, ["line 3", "split 'TRAIN'"]),
        (lambda row: {**row, "boxes": row["boxes"][:-1]}, ["line 3", "boxes"]),
        (lambda row: {**row, "boxes": [[0, 0, 1]] * len(row["boxes"])}, ["line 3", "boxes"]),
        (lambda row: {**row, "narration": "  "}, ["line 3", "narration"]),
        (lambda row: {**row, "action": 99}, ["line 3", "action"]),
        (lambda row: {k: v for k, v in row.items() if k != "caption"}, ["line 3", "caption"]),
    ],
)
def test_bad_meta_rows_name_the_file_line_and_field(world, tmp_path, capsys, change, needles):
    data = copy_dataset(world["eval"], tmp_path / "data")
    rows = [json.loads(line) for line in (data / "meta.jsonl").read_text().splitlines()]
    rows[2] = change(rows[2])
    (data / "meta.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, _, err = run_cli(capsys, "evaluate", "--run", str(world["run"]), "--data", str(data), "--quiet")
    assert code == 2
    one_line_error(err, "meta.jsonl", *needles)


# ------------------------------------------------------------------------------ leftovers of killed writers


def test_leftovers_of_a_killed_generate_and_checkpoint_are_cleaned(world, tmp_path, capsys):
    out = tmp_path / "data"
    assert run_cli(capsys, "generate", "--out", str(out), "--quiet", *TINY)[0] == 0
    killed = tmp_path / ".data.k1ll3d.partial"
    killed.mkdir()
    (killed / "frames.npy").write_bytes(b"\0" * 1000)
    assert run_cli(capsys, "generate", "--out", str(out), "--quiet", *TINY)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]

    run = tmp_path / "run"
    shutil.copytree(world["run"], run)
    (run / ".checkpoint.pt.k1ll3d.tmp.pt").write_bytes(b"")
    code, _, err = run_cli(capsys, "pretrain", "--data", str(world["pretrain"]), "--out", str(run), "--loss",
                           "attention", "--batch-size", "8", "--epochs", "1", "--dim", "16", "--width", "0.25",
                           "--device", "cpu", "--resume", "--quiet")
    assert code == 0, err
    assert not any(p.name.startswith(".") for p in run.iterdir())


# ------------------------------------------------------------------------------ small


def test_version_and_module_entry_point():
    for command in ([sys.executable, "-m", "fgmm_lib", "--version"], [sys.executable, "-m", "fgmm_lib.cli", "--version"]):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0 and done.stdout.startswith("fgmm "), done.stderr
