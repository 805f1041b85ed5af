"""The loss benchmark at tiny sizes on the CPU: table, statuses, files, memory measure, targets."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from fgmm_lib.bench import loss as bench

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    table = bench.bench_loss(out_dir=out, device="cpu", quick=True, progress=False,
                             backends=("naive", "chunked", "triton"))
    return out, table


def test_quick_run_writes_table_plot_and_summary(quick_run):
    out, table = quick_run
    on_disk = pd.read_csv(out / "loss.csv")
    assert list(on_disk.columns) == bench.CSV_COLUMNS
    sizes = len(bench.QUICK_SWEEP["batch_sizes"]) * len(bench.QUICK_SWEEP["cells"]) * len(bench.QUICK_SWEEP["phrases"])
    assert len(on_disk) == len(table) == 3 * len(bench.BENCH_AGGREGATIONS) * sizes
    measured = on_disk[on_disk["backend"].isin(["naive", "chunked"])]
    assert set(measured["status"]) == {"ok"}, measured[["backend", "status", "reason"]]
    assert (measured["time_ms"] > 0).all() and (measured["peak_mib"] >= 0).all()
    assert (measured["repeats"] == bench.QUICK_SWEEP["repeats"]).all()
    fused = on_disk[on_disk["backend"] == "triton"]
    assert set(fused["status"]) == {"skipped"} and fused["reason"].str.contains("CUDA").all()
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["dtype"] == "float32"
    rows = summary["largest_batch_within_budget"]["rows"]
    assert {(r["backend"], r["aggregation"]) for r in rows} == {
        (b, a) for b in ("naive", "chunked", "triton") for a in bench.BENCH_AGGREGATIONS}
    assert all(r["largest_batch"] is None for r in rows if r["backend"] == "triton")
    assert not list(out.glob(".*")), "temporary files left behind"


def test_cpu_memory_measure_sees_an_allocation():
    memory = bench._CpuMemory()
    if not memory.available:
        pytest.skip("no /proc/self/clear_refs or glibc here: the CPU peak is reported as nan")

    def allocate() -> None:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        assert block.sum() > 0

    _, peak = memory.measure(allocate)
    _, idle = memory.measure(lambda: None)
    assert 60 * 2**20 <= peak <= 100 * 2**20, peak / 2**20
    assert idle < 8 * 2**20, idle / 2**20


def test_cpu_peaks_come_from_a_pass_before_every_timed_run(tmp_path, monkeypatch):
    """Peak memory is measured with the exact allocator setting, every configuration's before any
    timed run (a timed run leaves freed blocks resident that a later peak would count); the times
    come from ``timed`` runs, and each row carries its configuration's peak."""
    if not bench._CpuMemory().available:
        pytest.skip("no /proc/self/clear_refs or glibc here: no peak pass")
    calls = []
    peaks = iter(float(mib) * 2**20 for mib in range(1, 100))

    def measure(self, step):
        step()
        calls.append("peak")
        return 0.0, next(peaks)

    def timed(self, step):
        calls.append("time")
        return bench._timed(step)

    monkeypatch.setattr(bench._CpuMemory, "measure", measure)
    monkeypatch.setattr(bench._CpuMemory, "timed", timed)
    table = bench.bench_loss(out_dir=tmp_path, device="cpu", quick=True, progress=False,
                             backends=("naive", "chunked"), aggregations=("max",))
    configs = len(table)
    assert calls == ["peak"] * configs + ["time"] * configs * bench.QUICK_SWEEP["repeats"]
    assert set(table["status"]) == {"ok"}
    assert sorted(table["peak_mib"]) == [float(mib) for mib in range(1, configs + 1)]
    assert (table["repeats"] == bench.QUICK_SWEEP["repeats"]).all()


def test_a_configuration_failing_its_peak_run_is_not_timed(tmp_path, monkeypatch):
    if not bench._CpuMemory().available:
        pytest.skip("no /proc/self/clear_refs or glibc here: no peak pass")

    def measure(self, step):
        raise RuntimeError("boom in the peak pass")

    timed = []
    monkeypatch.setattr(bench._CpuMemory, "measure", measure)
    monkeypatch.setattr(bench._CpuMemory, "timed", lambda self, step: timed.append(1) or 1.0)
    table = bench.bench_loss(out_dir=tmp_path, device="cpu", quick=True, progress=False,
                             backends=("naive",), aggregations=("mean",))
    assert set(table["status"]) == {"error"} and table["reason"].str.contains("boom in the peak pass").all()
    assert not timed and table["time_ms"].isna().all()


def test_budget_skips_and_plot_survives_nothing_run(tmp_path):
    table = bench.bench_loss(out_dir=tmp_path, device="cpu", quick=True, progress=False,
                             backends=("naive",), aggregations=("max",), memory_budget_gib=1e-6)
    assert set(table["status"]) == {"skipped"} and table["reason"].str.contains("budget").all()
    assert table["time_ms"].isna().all()
    assert (tmp_path / "loss.png").exists() and (tmp_path / "loss.csv").exists()


def _synthetic(rows):
    base = {"dim": 256, "dtype": "float32", "device": "cpu", "reason": "", "time_ms_min": math.nan,
            "estimated_mib": 0.0, "gflop": 1.0, "repeats": 1}
    return pd.DataFrame([{**base, **row} for row in rows], columns=bench.CSV_COLUMNS)


def test_summary_evaluates_the_cpu_target():
    where = {"aggregation": "attention", "batch": 256, "cells": 64, "phrases": 16, "status": "ok", "tflops": 1.0}
    # the medians' ratio (1.6) would fail; the target reads the fastest repeats (1.4)
    table = _synthetic([{**where, "backend": "naive", "time_ms": 100.0, "time_ms_min": 100.0, "peak_mib": 800.0},
                        {**where, "backend": "chunked", "time_ms": 160.0, "time_ms_min": 140.0, "peak_mib": 90.0}])
    check = bench.summarize(table, "cpu", "x", "float32", None, 1.0, "test")["targets"]["cpu_chunked_vs_naive"]
    assert check["per_aggregation"][0]["memory_ratio"] == pytest.approx(90 / 800)
    assert check["per_aggregation"][0]["time_ratio"] == pytest.approx(1.4)
    assert check["passed"] is True
    table.loc[table["backend"] == "chunked", "time_ms_min"] = 151.0  # above 1.5x
    check = bench.summarize(table, "cpu", "x", "float32", None, 1.0, "test")["targets"]["cpu_chunked_vs_naive"]
    assert check["per_aggregation"][0]["time_ok"] is False and check["passed"] is False
    table.loc[table["backend"] == "chunked", "time_ms_min"] = 140.0
    table.loc[table["backend"] == "chunked", "peak_mib"] = 120.0  # above 1/8
    check = bench.summarize(table, "cpu", "x", "float32", None, 1.0, "test")["targets"]["cpu_chunked_vs_naive"]
    assert check["per_aggregation"][0]["memory_ok"] is False and check["passed"] is False


def test_summary_evaluates_the_gpu_target():
    where = {"aggregation": "max", "batch": 1024, "cells": 196, "phrases": 32, "dtype": "bfloat16"}
    table = _synthetic([{**where, "backend": "naive", "status": "oom", "time_ms": math.nan, "peak_mib": math.nan,
                         "tflops": math.nan},
                        {**where, "backend": "triton", "status": "ok", "time_ms": 50.0, "peak_mib": 900.0,
                         "tflops": 300.0}])
    target = bench.summarize(table, "cuda", "gpu", "bfloat16", 700.0, 16.0, "test")["targets"]["gpu_triton"]
    check = target["per_aggregation"][0]
    assert check["matmul_fraction"] == pytest.approx(300 / 700)
    assert check["triton_runs_where_naive_does_not"] and target["passed"] is True
    target = bench.summarize(table, "cuda", "gpu", "bfloat16", 1000.0, 16.0, "test")["targets"]["gpu_triton"]
    assert target["passed"] is False  # 30 % of the matmul rate


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="backend"):
        bench.bench_loss(out_dir=tmp_path, backends=("fast",), progress=False)
    with pytest.raises(ValueError, match="dtype"):
        bench.bench_loss(out_dir=tmp_path, dtype="float64", progress=False)
    with pytest.raises(ValueError, match="batch_sizes"):
        bench.bench_loss(out_dir=tmp_path, batch_sizes=(0,), progress=False)
    with pytest.raises(ValueError, match="repeats"):
        bench.bench_loss(out_dir=tmp_path, repeats=0, progress=False)


def test_bench_train_quick_writes_steps_phases_and_parallel(tmp_path):
    from fgmm_lib.bench.train import COLUMNS, PHASES, bench_train

    table = bench_train(out_dir=tmp_path, quick=True, progress=False)
    on_disk = pd.read_csv(tmp_path / "train.csv")
    assert list(on_disk.columns) == COLUMNS and len(on_disk) == len(table)
    steps = on_disk[on_disk["measure"] == "step"]
    assert set(steps["loss"]) == {"coarse"} and (steps["samples_per_s"] > 0).all()
    phases = on_disk[on_disk["measure"] == "phase"]
    for (loss, threads), group in phases.groupby(["loss", "threads"]):
        assert list(group["phase"]) == list(PHASES)
        assert group["share"].sum() == pytest.approx(1.0, abs=1e-6)
    parallel = on_disk[on_disk["measure"] == "parallel"]
    assert list(parallel["phase"]) == ["1x2", "2x1"] and (parallel["samples_per_s"] > 0).all()
    peaks = on_disk[on_disk["measure"] == "peak"]
    assert list(peaks["threads"]) == [1] and (peaks["gflops"] > 1).all()
    assert list(steps["threads"].unique()) == [1]
    assert (steps["gflops"] > 0).all() and ((steps["peak_share"] > 0) & (steps["peak_share"] < 1.5)).all()
    for _, row in steps.iterrows():
        peak = peaks.loc[peaks["threads"] == row["threads"], "gflops"].item()
        assert row["peak_share"] == pytest.approx(row["gflops"] / peak)
    formulation = on_disk[on_disk["measure"] == "formulation"]
    for (loss, batch), group in formulation.groupby(["loss", "batch_size"]):
        assert list(group["phase"]) == ["before", "after"] and (group["samples_per_s"] > 0).all()
        assert group["speedup"].iloc[0] == 1.0
        assert group["speedup"].iloc[1] == pytest.approx(group["samples_per_s"].iloc[1] / group["samples_per_s"].iloc[0])
    profile = pd.read_csv(tmp_path / "train_profile.csv")
    for (loss, batch), group in profile.groupby(["loss", "batch_size"]):
        assert group["share"].sum() == pytest.approx(1.0, abs=1e-6) and group["operator"].iloc[-1] == "(other)"
        assert (group["self_ms_per_step"] >= 0).all() and group["self_ms_per_step"].iloc[0] > 0
    assert set(profile["loss"]) == {"coarse"}
    with pytest.raises(ValueError, match="steps"):
        bench_train(out_dir=tmp_path, steps=0)
