"""The supervised reference (fgmm_lib.training.supervised): it learns what it is told, its curve and
summary say so, and bad configs are refused naming the field."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from fgmm_lib.cli.main import main
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.training.supervised import Classifier, SupervisedConfig, first_crossing, train_supervised


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(generate_dataset(
        GenerationConfig(clips=160, frames=4, size=16, seed=2, distractors=0, filler_words=0.0, misaligned_frames=0.0,
                         mismatched_narration=0.0, val_fraction=0.1, test_fraction=0.25),
        tmp_path_factory.mktemp("clean") / "digits", progress=False))


def config(data: Path, out: Path, **overrides) -> SupervisedConfig:
    values = dict(data=str(data), test_data=str(data), out=str(out), samples=320, batch_size=16, eval_every=160,
                  width=0.25)
    values.update(overrides)
    return SupervisedConfig(**values)


def test_learns_colour_and_writes_curve_and_summary(clean: Path, tmp_path: Path) -> None:
    """Colour is the easiest attribute: a few hundred samples lift test top-1 far above chance."""
    curve = train_supervised(config(clean, tmp_path / "run", attribute="colour", samples=960, lr=5e-3),
                             progress=False)
    on_disk = pd.read_csv(tmp_path / "run" / "curve.csv")
    assert list(on_disk["samples"]) == [0, 160, 320, 480, 640, 800, 960] == list(curve["samples"])
    assert list(on_disk["step"]) == [0, 10, 20, 30, 40, 50, 60]
    assert on_disk["test_top1"].iloc[-1] > 0.4  # chance 1/8
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["chance"] == pytest.approx(1 / 8) and summary["config"]["attribute"] == "colour"
    assert summary["final_test_top1"] == pytest.approx(on_disk["test_top1"].iloc[-1])
    assert summary["samples_to"]["0.5"] == first_crossing(on_disk, 0.5) is not None
    assert summary["test_clips"] > 0 and summary["train_clips"] > summary["test_clips"]


def test_same_seed_same_curve_and_pooling_changes_it(clean: Path, tmp_path: Path) -> None:
    first = train_supervised(config(clean, tmp_path / "a"), progress=False)
    second = train_supervised(config(clean, tmp_path / "b"), progress=False)
    pooled = train_supervised(config(clean, tmp_path / "c", pooling="max"), progress=False)
    columns = ["samples", "train_loss", "test_top1"]
    pd.testing.assert_frame_equal(first[columns], second[columns])
    assert not first["train_loss"].iloc[1:].equals(pooled["train_loss"].iloc[1:])


def test_classifier_pools_cells_as_asked() -> None:
    torch.manual_seed(0)
    model = Classifier(10, width=0.25, depth=1, pooling="max")
    video = torch.rand(2, 3, 4, 16, 16)
    cells = model.encoder.features(video).flatten(2)
    assert torch.allclose(model(video), model.head(cells.amax(2)))
    model.pooling = "mean"
    assert torch.allclose(model(video), model.head(cells.mean(2)))


def test_first_crossing() -> None:
    curve = pd.DataFrame({"samples": [0, 100, 200, 300], "test_top1": [0.1, 0.55, 0.4, 0.95]})
    assert first_crossing(curve, 0.5) == 100 and first_crossing(curve, 0.9) == 300
    assert first_crossing(curve, 0.99) is None


@pytest.mark.parametrize("overrides, field_name", [
    ({"attribute": "shape"}, "attribute"), ({"pooling": "attention"}, "pooling"), ({"samples": 0}, "samples"),
    ({"samples": 8, "batch_size": 16}, "samples"), ({"lr": -1.0}, "lr"), ({"eval_every": True}, "eval_every"),
])
def test_bad_config_names_the_field(clean: Path, tmp_path: Path, overrides: dict, field_name: str) -> None:
    with pytest.raises(ValueError, match=f"SupervisedConfig.{field_name}"):
        config(clean, tmp_path, **overrides)


def test_bad_data_is_named(clean: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has no clips|fewer than batch_size"):
        train_supervised(config(clean, tmp_path / "x", train_split="val", batch_size=64, samples=64), progress=False)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        train_supervised(config(tmp_path / "nowhere", tmp_path / "y"), progress=False)


def test_cli(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["supervised", "--quiet", "--data", str(clean), "--test-data", str(clean), "--out",
                 str(tmp_path / "cli"), "--samples", "32", "--batch-size", "16", "--width", "0.25",
                 "--attribute", "action"]) == 0
    assert "action test top-1" in capsys.readouterr().out
    assert (tmp_path / "cli" / "summary.json").is_file()


def test_cli_help_lists_every_field(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["supervised", "--help"])
    assert stopped.value.code == 0
    text = capsys.readouterr().out
    assert all(f"--{name.replace('_', '-')}" in text for name in SupervisedConfig.__dataclass_fields__)
