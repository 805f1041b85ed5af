"""Tests for fgmm_lib.training.loop: run folder contents, reproducibility, kill and resume, bad input."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fgmm_lib.data.dataset import NarratedDigits
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.losses.scores import LOSSES
from fgmm_lib.models.encoders import DualEncoder
from fgmm_lib.runs.config import TrainConfig, loss_from_config, peak_lr
from fgmm_lib.runs.folder import load_run
from fgmm_lib.training import loop as train_loop
from fgmm_lib.training.loop import pretrain
from fgmm_lib.training.step import batch_loss, lr_factor, validation_steps, warmup_steps

STEPS_PER_EPOCH = 4  # 36 train clips // batch 8


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: these tiny steps gain nothing from more, and lose a lot when the cores are shared."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = generate_dataset(GenerationConfig(clips=48, frames=4, size=32), tmp_path_factory.mktemp("data") / "digits",
                            progress=False)
    assert len(NarratedDigits(root, split="train")) == 36
    return Path(root)


def make_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), loss="attention", batch_size=8, epochs=2, dim=16, width=0.25,
                  device="cpu", backend="chunked")
    values.update(overrides)
    return TrainConfig(**values)


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def checkpoint_of(run: Path) -> dict:
    return torch.load(run / "checkpoint.pt", weights_only=True)


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = checkpoint_of(first), checkpoint_of(second)
    for part in ("model", "loss"):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name} differs"


def killed_at_call(call: int):
    """``batch_loss`` that raises KeyboardInterrupt at its ``call``-th call, as a kill would."""
    calls = {"n": 0}
    real_batch_loss = train_loop.batch_loss

    def batch_loss(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt("killed")
        return real_batch_loss(*args, **kwargs)

    return batch_loss


def weights_differ(first: Path, second: Path) -> bool:
    a, b = checkpoint_of(first)["model"], checkpoint_of(second)["model"]
    return any(not torch.equal(a[name], b[name]) for name in a)


@pytest.fixture(scope="module")
def full_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-epoch "attention" run: the reference for resume tests."""
    return pretrain(make_config(data, tmp_path_factory.mktemp("runs") / "full"), progress=False)


def test_run_writes_every_file(full_run: Path, data: Path) -> None:
    names = {path.name for path in full_run.iterdir()}
    assert names == {"config.json", "vocab.json", "log.jsonl", "checkpoint.pt", "compute.json"}, names

    info = json.loads((full_run / "config.json").read_text())
    vocab = NarratedDigits(data, split="train").vocab
    assert info["train"] == make_config(data, full_run).to_dict()
    assert info["model"]["vocab_size"] == len(vocab) and info["model"]["dim"] == 16
    assert info["vocab_fingerprint"] == vocab.fingerprint()
    assert info["steps_per_epoch"] == STEPS_PER_EPOCH and info["total_steps"] == 2 * STEPS_PER_EPOCH

    rows = read_log(full_run)
    assert [row["step"] for row in rows] == list(range(1, 9))
    assert [row["epoch"] for row in rows] == [1] * 4 + [2] * 4
    warmup = info["warmup_steps"]
    for row in rows:
        assert set(row) == {"step", "epoch", "loss", "temperature", "attn_temperature", "weight_temperature",
                            "lr", "samples_per_s", "wall_s"}
        assert math.isfinite(row["loss"]) and row["loss"] > 0
        assert row["lr"] == pytest.approx(2e-3 * lr_factor(row["step"] - 1, 8, warmup))
        assert row["samples_per_s"] > 0
        assert row["attn_temperature"] == pytest.approx(0.1) and row["weight_temperature"] == pytest.approx(0.1)
    assert all(a["wall_s"] < b["wall_s"] for a, b in zip(rows, rows[1:]))

    compute = json.loads((full_run / "compute.json").read_text())
    assert compute["flops_per_step"] > 1e6
    assert compute["total_flops"] == compute["flops_per_step"] * 8
    assert compute["steps"] == 8 and compute["samples_seen"] == 64 and compute["wall_s"] > 0
    assert compute["samples_per_s"] == pytest.approx(64 / compute["wall_s"])

    checkpoint = checkpoint_of(full_run)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["step_in_epoch"]) == (2, 8, 0)
    assert set(checkpoint["rng"]) == {"torch", "cuda", "numpy", "python", "shuffle"}
    assert set(checkpoint["optimizer"]["state"])  # Adam moments saved

    model, loss_module, config, run_vocab = load_run(full_run)
    assert isinstance(model, DualEncoder) and not model.training
    assert config == make_config(data, full_run)
    assert run_vocab.fingerprint() == vocab.fingerprint()
    assert loss_module is not None and loss_module.temperature == pytest.approx(rows[-1]["temperature"])
    for name, value in model.state_dict().items():
        assert torch.equal(value, checkpoint["model"][name])


def test_same_seed_same_weights(data: Path, tmp_path: Path) -> None:
    first = pretrain(make_config(data, tmp_path / "a", loss="max", epochs=1), progress=False)
    # Batches assembled by a worker process must not change anything either.
    second = pretrain(make_config(data, tmp_path / "b", loss="max", epochs=1, num_workers=1), progress=False)
    other_seed = pretrain(make_config(data, tmp_path / "c", loss="max", epochs=1, seed=1), progress=False)
    assert_same_weights(first, second)
    assert [row["loss"] for row in read_log(first)] == [row["loss"] for row in read_log(second)]
    assert weights_differ(first, other_seed)


def test_resume_after_kill_matches_uninterrupted(full_run: Path, data: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the run during step 6 (epoch 2), resume from the epoch-1 checkpoint: same weights bitwise."""
    real_batch_loss = train_loop.batch_loss
    killed_at_step_6 = killed_at_call(6)
    config = make_config(data, tmp_path / "run")
    monkeypatch.setattr(train_loop, "batch_loss", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, progress=False)
    monkeypatch.setattr(train_loop, "batch_loss", real_batch_loss)
    assert checkpoint_of(tmp_path / "run")["step"] == STEPS_PER_EPOCH
    assert [row["step"] for row in read_log(tmp_path / "run")] == [1, 2, 3, 4, 5]

    pretrain(config, resume=True, progress=False)
    assert_same_weights(full_run, tmp_path / "run")
    resumed_rows, full_rows = read_log(tmp_path / "run"), read_log(full_run)
    assert [row["step"] for row in resumed_rows] == list(range(1, 9))
    assert [row["loss"] for row in resumed_rows] == [row["loss"] for row in full_rows]
    assert json.loads((tmp_path / "run" / "compute.json").read_text())["steps"] == 8


def test_max_steps_mid_epoch_then_resume(full_run: Path, data: Path, tmp_path: Path) -> None:
    run = pretrain(make_config(data, tmp_path / "run", max_steps=5), progress=False)
    checkpoint = checkpoint_of(run)
    assert (checkpoint["epoch"], checkpoint["step_in_epoch"], checkpoint["step"]) == (1, 1, 5)
    assert len(read_log(run)) == 5
    pretrain(make_config(data, tmp_path / "run"), resume=True, progress=False)
    assert_same_weights(full_run, run)
    # Resuming a finished run trains nothing and changes nothing.
    before = (run / "checkpoint.pt").read_bytes()
    pretrain(make_config(data, tmp_path / "run"), resume=True, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert len(read_log(run)) == 8


def test_nan_loss_raises_and_keeps_checkpoint(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = make_config(data, tmp_path / "run", loss="coarse", max_steps=STEPS_PER_EPOCH)
    pretrain(config, progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    calls = {"n": 0}
    real_batch_loss = train_loop.batch_loss

    def nan_at_second_call(*args, **kwargs):
        calls["n"] += 1
        value = real_batch_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] == 2 else value

    monkeypatch.setattr(train_loop, "batch_loss", nan_at_second_call)
    with pytest.raises(FloatingPointError, match=r"nan at step 6 .*checkpoint.*\(step 4\) is kept"):
        pretrain(make_config(data, tmp_path / "run", loss="coarse"), resume=True, progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert not list((tmp_path / "run").glob(".*tmp")), "no temporary files left behind"

    # The very first step gives inf: no checkpoint at all.
    monkeypatch.setattr(train_loop, "batch_loss",
                        lambda *a, **k: real_batch_loss(*a, **k) * float("inf"))
    with pytest.raises(FloatingPointError, match=r"inf at step 1 .*no checkpoint"):
        pretrain(make_config(data, tmp_path / "fresh", loss="coarse"), progress=False)
    assert not (tmp_path / "fresh" / "checkpoint.pt").exists()


def test_batch_size_larger_than_split_raises(data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size 37.*36 clips"):
        pretrain(make_config(data, tmp_path / "run", batch_size=37), progress=False)
    assert not (tmp_path / "run").exists(), "nothing written"


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_and_overfits_a_fixed_batch(loss: str, data: Path, tmp_path: Path) -> None:
    run = pretrain(make_config(data, tmp_path / "run", loss=loss, max_steps=1), progress=False)
    rows = read_log(run)
    assert len(rows) == 1 and math.isfinite(rows[0]["loss"])
    assert checkpoint_of(run)["step"] == 1

    torch.manual_seed(0)
    config = make_config(data, tmp_path / "unused", loss=loss)
    model = DualEncoder(config.model_config(len(NarratedDigits(data, split="train").vocab)))
    loss_module = loss_from_config(config)
    batch = NarratedDigits(data, split="train", neighbours=1).get_batch(list(range(8)))
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(loss_module.parameters()), lr=5e-3)
    values = []
    for _ in range(8):
        optimizer.zero_grad()
        value = batch_loss(model, loss_module, batch)
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < 0.8 * values[0], values


def test_milnce_temperature_is_learned(data: Path) -> None:
    loss_module = loss_from_config(TrainConfig(data=str(data), out="unused", loss="milnce", temperature=0.2))
    assert loss_module.temperature == pytest.approx(0.2)
    video, text = torch.randn(4, 8), torch.randn(4, 3, 8)
    loss_module(video, text).backward()
    assert loss_module.log_temperature.grad is not None and loss_module.log_temperature.grad != 0


def test_lr_schedule_warms_up_then_decays() -> None:
    factors = [lr_factor(step, 10, 2) for step in range(10)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert all(a > b for a, b in zip(factors[2:], factors[3:]))
    assert factors[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(0, 10, 0) == 1.0


def test_config_from_dict(tmp_path: Path) -> None:
    config = TrainConfig.from_dict({"data": "d", "out": "o", "lr": "2e-3", "batch_size": 16.0,
                                    "learn_attention_temperatures": "true"})
    assert config.lr == 0.002 and config.batch_size == 16 and config.learn_attention_temperatures is True
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="lr_rate"):
        TrainConfig.from_dict({"data": "d", "out": "o", "lr_rate": 0.1})
    with pytest.raises(ValueError, match="out"):
        TrainConfig.from_dict({"data": "d"})


@pytest.mark.parametrize(
    ("overrides", "field_name"),
    [
        ({"loss": "contrastive"}, "loss"),
        ({"backend": "cuda"}, "backend"),
        ({"batch_size": 1}, "batch_size"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"warmup_fraction": 1.0}, "warmup_fraction"),
        ({"width": -1.0}, "width"),
        ({"temperature": 0}, "temperature"),
        ({"neighbours": -1}, "neighbours"),
        ({"device": "gpu0"}, "device"),
        ({"learn_attention_temperatures": "maybe"}, "learn_attention_temperatures"),
    ],
)
def test_bad_config_value_names_field(overrides: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=field_name):
        TrainConfig.from_dict({"data": "d", "out": "o", **overrides})


def test_existing_run_needs_resume(full_run: Path, data: Path, tmp_path: Path) -> None:
    before = (full_run / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match="resume"):
        pretrain(make_config(data, full_run), progress=False)
    assert (full_run / "checkpoint.pt").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="no checkpoint.pt"):
        pretrain(make_config(data, tmp_path / "empty"), resume=True, progress=False)


def test_resume_with_another_config_raises(full_run: Path, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    with pytest.raises(ValueError, match=r"lr: 0.001 vs 0.002"):
        pretrain(make_config(data, run, lr=1e-3), resume=True, progress=False)
    # The same vocabulary but data generated with other parameters.
    other_data = tmp_path / "other_data"
    shutil.copytree(data, other_data)
    params = json.loads((other_data / "params.json").read_text())
    params["seed"] = 5
    (other_data / "params.json").write_text(json.dumps(params))
    with pytest.raises(ValueError, match=r"other parameters.*seed: 5 vs 0"):
        pretrain(make_config(other_data, run), resume=True, progress=False)


def test_unwritable_out_raises_before_training(data: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ValueError, match="cannot be written"):
        pretrain(make_config(data, blocker / "run"), progress=False)
    with pytest.raises(ValueError, match="not a folder"):
        pretrain(make_config(data, blocker), progress=False)


def test_load_run_errors(full_run: Path, data: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="empty"):
        (tmp_path / "empty").mkdir()
        load_run(tmp_path / "empty")

    # A checkpoint from a run with another model size.
    other = pretrain(make_config(data, tmp_path / "other", dim=8, max_steps=1), progress=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(full_run, mixed)
    shutil.copy(other / "checkpoint.pt", mixed / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"model configuration.*dim: 8 vs 16"):
        load_run(mixed)

    # A run folder whose vocabulary is not the one the checkpoint was trained with.
    wrong_vocab = tmp_path / "wrong_vocab"
    shutil.copytree(full_run, wrong_vocab)
    vocab = json.loads((wrong_vocab / "vocab.json").read_text())
    words = vocab["words"] if isinstance(vocab, dict) else vocab
    words.append("zzzextra")
    (wrong_vocab / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match="vocabulary"):
        load_run(wrong_vocab)


# ---------------------------------------------------------------- validation curves and lr rules

CLEAN = dict(distractors=0, filler_words=0.0, misaligned_frames=0.0, mismatched_narration=0.0)
CURVE_VALUES = ["samples_seen", "step", "epoch", "val_t2v_r1", "val_t2v_r5", "val_t2v_r10"]


@pytest.fixture(scope="module")
def val_data(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Clean clips of the same shape, generated with the pretraining vocabulary."""
    return Path(generate_dataset(GenerationConfig(clips=80, frames=4, size=32, seed=1, **CLEAN),
                                 tmp_path_factory.mktemp("val") / "eval", vocab=data / "vocab.json", progress=False))


@pytest.fixture(scope="module")
def curve_run(data: Path, val_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted two-epoch run that validates at 3 points (and before the first step)."""
    return pretrain(make_config(data, tmp_path_factory.mktemp("curves") / "run", val_data=str(val_data),
                                val_points=3), progress=False)


def test_validation_curve_rows(curve_run: Path, full_run: Path, val_data: Path) -> None:
    from fgmm_lib.runs.curves import CURVE_COLUMNS, read_curves

    curve = read_curves(curve_run / "curves.csv", run="run")
    assert list(curve.columns) == list(CURVE_COLUMNS)
    # 8 steps of 8 clips: before step 1, then after round(8k/3) = 3, 5, 8 steps.
    assert curve["step"].tolist() == [0, 3, 5, 8]
    assert curve["samples_seen"].tolist() == [0, 24, 40, 64]
    assert curve["epoch"].tolist() == pytest.approx([0, 0.75, 1.25, 2.0])
    for column in ("val_t2v_r1", "val_t2v_r5", "val_t2v_r10"):
        assert curve[column].between(0, 1).all()
    assert (curve["val_t2v_r1"] <= curve["val_t2v_r5"]).all() and (curve["val_t2v_r5"] <= curve["val_t2v_r10"]).all()
    assert curve["wall_s"].is_monotonic_increasing
    info = json.loads((curve_run / "config.json").read_text())
    assert info["validation_steps"] == [0, 3, 5, 8]
    assert json.loads((curve_run / "compute.json").read_text())["val_wall_s"] > 0

    # Validation changes no weight and no random state: the same run without it is bitwise equal.
    assert_same_weights(full_run, curve_run)
    assert [row["loss"] for row in read_log(curve_run)] == [row["loss"] for row in read_log(full_run)]

    # The last point is the test protocol on the val split with the final weights.
    from fgmm_lib.evaluation.protocol import evaluate

    with warnings.catch_warnings():  # words of the clean captions that the tiny train split lacks
        warnings.simplefilter("ignore")
        metrics = evaluate(curve_run, val_data, split="val", probe_split="train", progress=False)
    assert curve["val_t2v_r10"].iloc[-1] == pytest.approx(metrics["t2v"]["R@10"])
    assert curve["val_t2v_r1"].iloc[-1] == pytest.approx(metrics["t2v"]["R@1"])


def test_validation_every_samples(data: Path, val_data: Path, tmp_path: Path) -> None:
    config = make_config(data, tmp_path / "run", val_data=str(val_data), val_every=20, max_steps=6)
    assert validation_steps(config, 8) == [0, 3, 5, 8]  # first step at or past 20, 40, 60 samples; the end
    run = pretrain(config, progress=False)
    from fgmm_lib.runs.curves import read_curves

    assert read_curves(run / "curves.csv")["samples_seen"].tolist() == [0, 24, 40]  # stopped at step 6


def test_resume_after_kill_gives_the_same_curve(curve_run: Path, data: Path, val_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed during step 6, after the step-5 validation: resumed from the epoch-1 checkpoint, the
    curve rows and the weights equal the uninterrupted run's."""
    from fgmm_lib.runs.curves import read_curves

    real_batch_loss = train_loop.batch_loss
    killed_at_step_6 = killed_at_call(6)
    config = make_config(data, tmp_path / "run", val_data=str(val_data), val_points=3)
    monkeypatch.setattr(train_loop, "batch_loss", killed_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, progress=False)
    monkeypatch.setattr(train_loop, "batch_loss", real_batch_loss)
    assert read_curves(tmp_path / "run" / "curves.csv")["step"].tolist() == [0, 3, 5]

    pretrain(config, resume=True, progress=False)
    assert_same_weights(curve_run, tmp_path / "run")
    resumed, full = read_curves(tmp_path / "run" / "curves.csv"), read_curves(curve_run / "curves.csv")
    assert resumed[CURVE_VALUES].equals(full[CURVE_VALUES])
    assert resumed["config_fingerprint"].tolist() == full["config_fingerprint"].tolist()


def test_validation_on_test_split_is_refused(data: Path, val_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"val_split.*test split is read only by the final evaluation"):
        make_config(data, tmp_path / "run", val_data=str(val_data), val_split="test")
    with pytest.raises(ValueError, match="val_split"):
        TrainConfig.from_dict({"data": "d", "out": "o", "val_split": "dev"})


def test_validation_data_is_checked_before_training(data: Path, tmp_path: Path) -> None:
    other_vocab = generate_dataset(GenerationConfig(clips=48, frames=4, size=32, **CLEAN), tmp_path / "other",
                                   vocab=data / "vocab.json", progress=False)
    vocab = json.loads((other_vocab / "vocab.json").read_text())
    words = vocab["words"] if isinstance(vocab, dict) else vocab
    words.append("zzzextra")
    (other_vocab / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"other/vocab.json is another vocabulary"):
        pretrain(make_config(data, tmp_path / "a", val_data=str(other_vocab)), progress=False)
    assert not (tmp_path / "a" / "checkpoint.pt").exists()

    other_shape = generate_dataset(GenerationConfig(clips=48, frames=4, size=24, **CLEAN), tmp_path / "shape",
                                   vocab=data / "vocab.json", progress=False)
    with pytest.raises(ValueError, match=r"shape/params.json: size=24.*size=32"):
        pretrain(make_config(data, tmp_path / "b", val_data=str(other_shape)), progress=False)
    with pytest.raises(FileNotFoundError, match="val_data .*missing does not exist"):
        pretrain(make_config(data, tmp_path / "c", val_data=str(tmp_path / "missing")), progress=False)


def test_curve_of_another_run_is_refused(curve_run: Path, tmp_path: Path) -> None:
    from fgmm_lib.runs.curves import read_curves

    fingerprint = read_curves(curve_run / "curves.csv")["config_fingerprint"].iloc[0]
    read_curves(curve_run / "curves.csv", run="run", fingerprint=fingerprint)
    with pytest.raises(ValueError, match=r"curves.csv belongs to another run: its run is 'run', expected 'other'"):
        read_curves(curve_run / "curves.csv", run="other")
    with pytest.raises(ValueError, match="belongs to another run: its config_fingerprint"):
        read_curves(curve_run / "curves.csv", fingerprint="0" * 16)
    mixed = tmp_path / "mixed.csv"
    text = (curve_run / "curves.csv").read_text()
    mixed.write_text(text + text.splitlines()[-1].replace(fingerprint, "f" * 16) + "\n")
    with pytest.raises(ValueError, match="mixes the rows of several runs"):
        read_curves(mixed)
    bad = tmp_path / "bad.csv"
    bad.write_text("samples_seen,val_t2v_r10\n0,0.1\n")
    with pytest.raises(ValueError, match="lacks the column"):
        read_curves(bad)


def test_curve_gain() -> None:
    import pandas as pd

    from fgmm_lib.runs.curves import curve_gain

    flat = pd.DataFrame({"samples_seen": [0, 100, 200, 300, 400, 500], "val_t2v_r10": [0.1, 0.5, 0.6, 0.6, 0.6, 0.61]})
    assert curve_gain(flat) == pytest.approx(0.01)  # 0.61 - value at 400
    rising = pd.DataFrame({"samples_seen": [0, 250, 500], "val_t2v_r10": [0.0, 0.25, 0.5]})
    assert curve_gain(rising) == pytest.approx(0.1)  # interpolated at 400: 0.4
    assert curve_gain(rising, fraction=1.0) == pytest.approx(0.5)
    # Two seeds: the gain of their mean curve.
    seeds = pd.DataFrame({"samples_seen": [0, 500, 0, 500], "val_t2v_r10": [0.0, 0.4, 0.0, 0.6]})
    assert curve_gain(seeds) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="at least 2 points"):
        curve_gain(pd.DataFrame({"samples_seen": [5], "val_t2v_r10": [0.2]}))
    with pytest.raises(ValueError, match="fraction"):
        curve_gain(flat, fraction=0)
    with pytest.raises(ValueError, match="no column 'val_t2v_r10'"):
        curve_gain(flat.rename(columns={"val_t2v_r10": "r10"}))
    with pytest.raises(ValueError, match="validate earlier"):
        curve_gain(pd.DataFrame({"samples_seen": [450, 500], "val_t2v_r10": [0.2, 0.3]}))


@pytest.mark.parametrize(
    ("scaling", "batch_size", "expected_lr", "expected_warmup"),
    [
        ("none", 8, 2e-3, 12),
        ("none", 256, 2e-3, 0),
        ("sqrt", 16, 1e-3, 6),
        ("sqrt", 256, 4e-3, 0),
        ("linear", 8, 2.5e-4, 12),
        ("linear", 128, 4e-3, 1),
    ],
)
def test_lr_and_warmup_follow_the_batch_size(scaling: str, batch_size: int, expected_lr: float,
                                             expected_warmup: int) -> None:
    config = TrainConfig(data="d", out="o", lr=2e-3, batch_size=batch_size, lr_scaling=scaling,
                         reference_batch_size=64, warmup_samples=100)
    assert peak_lr(config) == pytest.approx(expected_lr)
    assert warmup_steps(config, total_steps=1000) == expected_warmup  # round(100 / batch_size)
    assert warmup_steps(config, total_steps=3) == min(3, expected_warmup)
    fraction = TrainConfig(data="d", out="o", warmup_fraction=0.1, batch_size=batch_size)
    assert warmup_steps(fraction, total_steps=1000) == 100 and peak_lr(fraction) == 2e-3


def test_lr_rule_is_recorded_and_used(data: Path, tmp_path: Path) -> None:
    run = pretrain(make_config(data, tmp_path / "run", lr_scaling="linear", reference_batch_size=16,
                               warmup_samples=16, max_steps=4), progress=False)
    info = json.loads((run / "config.json").read_text())
    compute = json.loads((run / "compute.json").read_text())
    assert info["peak_lr"] == compute["peak_lr"] == pytest.approx(1e-3)  # 2e-3 x 8 / 16
    assert info["warmup_steps"] == compute["warmup_steps"] == 2  # 16 samples of batch 8
    assert [row["lr"] for row in read_log(run)] == pytest.approx([1e-3 * lr_factor(step, 8, 2) for step in range(4)])
    with pytest.raises(ValueError, match="lr_scaling"):
        TrainConfig.from_dict({"data": "d", "out": "o", "lr_scaling": "cubic"})


NEW_KEYS = ("lr_scaling", "reference_batch_size", "warmup_samples", "val_data", "val_split", "val_points",
            "val_every", "fast_path")


def test_runs_of_an_older_version_load_and_resume(full_run: Path, data: Path, tmp_path: Path) -> None:
    """A run whose config.json and checkpoint predate the lr and validation fields."""
    run = pretrain(make_config(data, tmp_path / "old", max_steps=5), progress=False)
    info = json.loads((run / "config.json").read_text())
    for key in NEW_KEYS:
        del info["train"][key]
    (run / "config.json").write_text(json.dumps(info))
    checkpoint = checkpoint_of(run)
    for key in NEW_KEYS:
        del checkpoint["train_config"][key]
    torch.save(checkpoint, run / "checkpoint.pt")

    assert TrainConfig.from_dict(info["train"]) == make_config(data, run, max_steps=5)
    _, _, config, _ = load_run(run)
    assert config.lr_scaling == "none" and config.val_data == ""
    pretrain(make_config(data, run), resume=True, progress=False)
    assert_same_weights(full_run, run)


def test_fast_path_trains_the_same_run_within_rounding(full_run: Path, data: Path, tmp_path: Path) -> None:
    """fast_path computes the same function: the first step's loss equal within float32 rounding, every
    logged loss close, and a run started without it resumes with it (the same parameters and state)."""
    fast = pretrain(make_config(data, tmp_path / "fast", fast_path=True), progress=False)
    reference, fast_rows = read_log(full_run), read_log(fast)
    assert [row["step"] for row in fast_rows] == [row["step"] for row in reference]
    assert fast_rows[0]["loss"] == pytest.approx(reference[0]["loss"], rel=1e-5)
    for row, want in zip(fast_rows, reference):
        assert row["loss"] == pytest.approx(want["loss"], rel=1e-3)
    # Adam divides by the gradient's running scale, so where a gradient is near zero a rounding
    # difference can move a weight by up to lr a step: 8 steps of lr 2e-3 bound the drift.
    drift = 8 * 2e-3
    a, b = checkpoint_of(full_run)["model"], checkpoint_of(fast)["model"]
    assert a.keys() == b.keys()
    assert max((a[name] - b[name]).abs().max().item() for name in a) < drift
    assert json.loads((fast / "config.json").read_text())["train"]["fast_path"] is True

    half = pretrain(make_config(data, tmp_path / "switch", max_steps=4), progress=False)
    pretrain(make_config(data, half, fast_path=True), resume=True, progress=False)
    assert [row["step"] for row in read_log(half)] == list(range(1, 9))
    switched = checkpoint_of(half)["model"]
    assert max((switched[name] - a[name]).abs().max().item() for name in a) < drift / 2


def test_fast_path_step_has_the_same_gradients(data: Path) -> None:
    """One step's loss and every gradient, fast path against the reference, on the same weights and batch."""
    config = make_config(data, data / "unused", loss="attention", width=0.5)
    dataset = NarratedDigits(data, split="train")
    batch = {key: torch.as_tensor(value) for key, value in dataset.get_batch(list(range(8))).items()
             if key in ("video", "tokens", "token_mask")}
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = DualEncoder(config.model_config(len(dataset.vocab)))
        model.video.use_fast_path(fast)
        loss_module = loss_from_config(config)
        loss_module.keep_single_block = fast
        loss = batch_loss(model, loss_module, batch)
        results.append((loss, torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)))
    (loss_ref, grads_ref), (loss_fast, grads_fast) = results
    assert loss_fast.item() == pytest.approx(loss_ref.item(), rel=1e-5)
    assert sum(grad is not None for grad in grads_ref) > 20
    for reference, fast in zip(grads_ref, grads_fast):
        assert (reference is None) == (fast is None)
        if reference is None:
            continue
        assert (reference - fast).abs().max().item() <= 2e-4 * reference.abs().max().item() + 1e-7


def test_reuse_freed_memory_stops_page_faults_on_large_tensors() -> None:
    """Allocating, touching and freeing a 64 MiB tensor again and again: glibc's default faults every
    page in afresh each time; after reuse_freed_memory the freed block is reused."""
    code = """
import resource, torch
from fgmm_lib.io import reuse_freed_memory
def faults():
    for _ in range(2):
        torch.ones(16 * 2**20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        torch.ones(16 * 2**20)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
default = min(faults(), faults())
assert reuse_freed_memory()
faults()  # the heap grows to hold the block once
print(default, faults())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    default, reused = (int(value) for value in out.split())
    assert default > 5 * 10_000  # 16,384 pages of 4 KiB per tensor, every time
    assert reused < 1_000
