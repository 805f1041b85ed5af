"""Tests for data-parallel pretraining: 2 gloo processes on the CPU against 1 process, faults, launch."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from fgmm_lib.cli.main import main as cli_main
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.losses.scores import LOSSES
from fgmm_lib.runs.config import TrainConfig
from fgmm_lib.training.distributed import torchrun_command
from fgmm_lib.training.launch import launch
from fgmm_lib.training.loop import pretrain

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"


def child_environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)


def torchrun(*arguments: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    command = [*torchrun_command([], 2)[:-3], str(WORKER), *arguments]
    return subprocess.run(command, env=child_environment(**extra), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(generate_dataset(GenerationConfig(clips=48, frames=4, size=32),
                                 tmp_path_factory.mktemp("data") / "digits", progress=False))


def make_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), batch_size=8, epochs=2, dim=16, width=0.25, device="cpu",
                  backend="chunked", max_steps=2)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def parallel_runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every loss with both gathers, 2 steps of global batch 8 on 2 processes."""
    out = tmp_path_factory.mktemp("parallel")
    finished = torchrun("runs", str(data), str(out))
    assert finished.returncode == 0, finished.stderr[-3000:]
    return out


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def assert_close_weights(first: Path, second: Path, steps: int = 2, lr: float = TrainConfig.lr) -> None:
    """The checkpoints' weights agree to 1e-4, but for AdamW's ill-conditioned elements: it divides
    each element's step by the root of its squared gradients, so an element whose gradient sums to
    about zero steps by about lr either way, as the rounding of that sum decides (one process sums in
    another order than two, and the order differs between CPUs). At most 1 in 1,000 elements of a
    tensor may differ, each by at most both runs' steps (2 x lr a step)."""
    a = torch.load(first / "checkpoint.pt", weights_only=True)
    b = torch.load(second / "checkpoint.pt", weights_only=True)
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            x, y = a[part][name].double(), b[part][name].double()
            assert x.shape == y.shape, f"{part}.{name}"
            off = (x - y).abs() > 1e-5 + 1e-4 * y.abs()
            assert int(off.sum()) <= x.numel() // 1000, f"{part}.{name}: {int(off.sum())} of {x.numel()} differ"
            assert float((x - y).abs().max()) <= 2 * lr * steps, f"{part}.{name}"


@pytest.mark.parametrize("loss", LOSSES)
def test_two_processes_equal_one(loss: str, data: Path, parallel_runs: Path, tmp_path: Path) -> None:
    single = pretrain(make_config(data, tmp_path / "single", loss=loss), progress=False)
    for gather in ("all", "local"):
        run = parallel_runs / f"{loss}-{gather}"
        losses = [row["loss"] for row in read_log(run)]
        assert losses == pytest.approx([row["loss"] for row in read_log(single)], rel=1e-5), gather
        assert_close_weights(single, run)
        info = json.loads((run / "config.json").read_text())
        assert info["nproc"] == 2 and info["train"]["nproc"] == 2 and info["train"]["gather"] == gather
        compute = json.loads((run / "compute.json").read_text())
        assert compute["nproc"] == 2 and compute["samples_seen"] == 16
        assert sorted(path.name for path in run.iterdir()) == sorted(
            ["config.json", "vocab.json", "log.jsonl", "checkpoint.pt", "compute.json"])


def test_resume_on_another_number_of_processes_continues(data: Path, parallel_runs: Path, tmp_path: Path) -> None:
    """A run stopped on 2 processes goes on on 1, and ends where an uninterrupted 1-process run ends."""
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(parallel_runs / "attention-local", resumed)
    pretrain(make_config(data, resumed, loss="attention", max_steps=5), resume=True, progress=False)
    reference = pretrain(make_config(data, tmp_path / "reference", loss="attention", max_steps=5), progress=False)
    assert [row["step"] for row in read_log(resumed)] == [1, 2, 3, 4, 5]
    assert [row["loss"] for row in read_log(resumed)] == pytest.approx(
        [row["loss"] for row in read_log(reference)], rel=1e-4)
    assert_close_weights(reference, resumed, steps=5)
    assert json.loads((resumed / "config.json").read_text())["nproc"] == 1


def test_indivisible_batch_is_refused_before_any_work(data: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="batch_size 7 .* not divisible by the 2 processes"):
        pretrain(make_config(data, tmp_path / "run", batch_size=7), progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="batch_size 9 .* not divisible by the 2 processes"):
        launch(make_config(data, tmp_path / "run", batch_size=9, nproc=2), progress=False)


def test_dead_rank_stops_the_others_in_bounded_time(data: Path, tmp_path: Path) -> None:
    start = time.perf_counter()
    finished = torchrun("dead", str(data), str(tmp_path), timeout=90, FGMM_DIST_TIMEOUT_S="10")
    assert finished.returncode != 0
    assert time.perf_counter() - start < 60
    run = tmp_path / "run"
    leftovers = sorted(path.name for path in run.iterdir()) if run.exists() else []
    assert not [name for name in leftovers if name.startswith(".")], leftovers
    assert "checkpoint.pt" not in leftovers
    error = tmp_path / "error.txt"
    if error.exists():  # rank 0 saw the failure itself (else torchrun stopped it first)
        seconds, message = error.read_text().split("\n", 1)
        assert float(seconds) < 30, message


def test_cli_nproc_launches_torchrun(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``fgmm pretrain --nproc 2`` runs torchrun; the run folder is the same as a direct launch's."""
    monkeypatch.setenv("PYTHONPATH", child_environment()["PYTHONPATH"])
    out = tmp_path / "run"
    code = cli_main(["pretrain", "--data", str(data), "--out", str(out), "--loss", "coarse", "--batch-size", "8",
                     "--epochs", "1", "--dim", "16", "--width", "0.25", "--device", "cpu", "--max-steps", "1",
                     "--nproc", "2", "--quiet"])
    assert code == 0
    assert json.loads((out / "compute.json").read_text())["nproc"] == 2
    assert len(read_log(out)) == 1


def test_bench_ddp_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fgmm_lib.bench.ddp import bench_ddp, largest_batch, loss_memory_bytes

    monkeypatch.setenv("PYTHONPATH", child_environment()["PYTHONPATH"])
    table = bench_ddp(tmp_path, losses=("coarse",), batch_size=8, steps=2, clips=48, quick=True)
    assert (tmp_path / "ddp.csv").is_file()
    measured = table[table["kind"] == "throughput"]
    assert list(measured["nproc"]) == [1, 2] and (measured["samples_per_s"] > 0).all()
    assert measured["peak_rss_mib_rank1"].notna().tolist() == [False, True]
    batch = largest_batch("naive", "all", 2, 2**30, 64, 12, 128)
    assert batch % 2 == 0 and loss_memory_bytes("naive", "all", batch, 2, 64, 12, 128) <= 2**30
    assert loss_memory_bytes("naive", "all", batch + 2, 2, 64, 12, 128) > 2**30


def test_validation_on_two_processes(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 validates while the other waits: no deadlock, and the curve of a 1-process run."""
    from fgmm_lib.runs.curves import read_curves

    monkeypatch.setenv("PYTHONPATH", child_environment()["PYTHONPATH"])
    val = generate_dataset(GenerationConfig(clips=80, frames=4, size=32, seed=1, distractors=0, filler_words=0.0,
                                            misaligned_frames=0.0, mismatched_narration=0.0),
                           tmp_path / "val", vocab=data / "vocab.json", progress=False)
    out = tmp_path / "run"
    code = cli_main(["pretrain", "--data", str(data), "--out", str(out), "--loss", "coarse", "--batch-size", "8",
                     "--epochs", "1", "--dim", "16", "--width", "0.25", "--device", "cpu", "--val-data", str(val),
                     "--val-points", "2", "--nproc", "2", "--quiet"])
    assert code == 0
    single = pretrain(make_config(data, tmp_path / "single", loss="coarse", epochs=1, max_steps=0,
                                  val_data=str(val), val_points=2), progress=False)
    parallel, reference = read_curves(out / "curves.csv"), read_curves(single / "curves.csv")
    assert parallel["step"].tolist() == reference["step"].tolist() == [0, 2, 4]
    assert parallel["val_t2v_r10"].tolist() == pytest.approx(reference["val_t2v_r10"].tolist(), abs=1e-6)
