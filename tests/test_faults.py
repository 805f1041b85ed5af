"""Faults a user causes while a command runs (issue 29): a killed or interrupted command leaves no
process behind and says once what it kept, one writer per output folder, and refusals before work.

The process tests run the real ``fgmm`` command in a session of its own and send it real signals:
Ctrl-C is SIGINT to the whole foreground process group, as a terminal sends it.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fgmm_lib.cli import main as cli
from fgmm_lib.data.generate import GenerationConfig, generate_dataset
from fgmm_lib.io import FolderBusyError, lock_file, output_lock
from fgmm_lib.runs.folder import load_checkpoint

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
FGMM = [sys.executable, "-m", "fgmm_lib"]
#: A small model, so that an epoch of the 48-clip dataset takes well under a second.
SMALL = ["--batch-size", "8", "--dim", "16", "--width", "0.25", "--device", "cpu", "--quiet"]


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    values = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", **extra)
    values.pop("TRITON_INTERPRET", None)  # the tests' interpreter switch (conftest) is not a user's setting
    return values


def _default_sigint() -> None:
    # A suite started in the background by a shell without job control (`pytest &`) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt; a terminal's process has the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*argv: str) -> subprocess.Popen:
    """``fgmm ARGV`` in a session of its own (its group is what a terminal's Ctrl-C reaches), with
    SIGINT at its default however the test suite itself was started."""
    return subprocess.Popen([*FGMM, *argv], env=environment(), cwd=ROOT, start_new_session=True,
                            preexec_fn=_default_sigint, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_fgmm(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*FGMM, *argv], env=environment(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


# ------------------------------------------------------------------------------ processes in /proc


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...


def alive(pid: int) -> bool:
    """True for a process that exists and is not a zombie (a dead child its new parent has not reaped)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and fields[0] not in ("Z", "X"):
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the command ended (status {process.returncode}) before {what}: "
                                 f"{process.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def assert_all_end(pids: set[int], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {pid: command_line(pid)[:160] for pid in pids if alive(pid)}
    for pid in left:  # do not leave them running for the rest of the suite
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes still running {timeout:.0f} s after their command ended: {left}"


def one_line(err: str, *needles: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def stop(process: subprocess.Popen) -> None:
    """End a command the test left running, and everything it started."""
    if process.poll() is None:
        for pid in descendants(process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=30)


# ------------------------------------------------------------------------------ data


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return Path(generate_dataset(GenerationConfig(clips=48, frames=4, size=32, seed=0),
                                 tmp_path_factory.mktemp("faults") / "digits", progress=False))


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    code = cli.main(["pretrain", "--data", str(data), "--out", str(run), "--epochs", "1", *SMALL])
    assert code == 0
    return run


def write_video(path: Path, frames: int) -> None:
    av = pytest.importorskip("av")
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    stream.options = {"preset": "ultrafast"}
    for k in range(frames):
        image = np.zeros((120, 160, 3), dtype=np.uint8)
        image[40:60, k % 140 : k % 140 + 20] = 255
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()


@pytest.fixture(scope="module")
def long_import(tmp_path_factory) -> Path:
    """A manifest of 16 videos of 60 s with a clip per second (944 clips): tens of seconds of decoding."""
    root = tmp_path_factory.mktemp("videos")
    write_video(root / "v0.mp4", frames=600)
    for index in range(1, 16):
        shutil.copyfile(root / "v0.mp4", root / f"v{index}.mp4")
    with open(root / "narrated.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "start", "end", "text", "split"])
        for index in range(16):
            for second in range(59):
                writer.writerow([f"v{index}.mp4", second, second + 1, f"the square moves {second % 7}", "train"])
    return root / "narrated.csv"


def import_command(manifest: Path, out: Path) -> list[str]:
    return ["import-videos", "--manifest", str(manifest), "--out", str(out), "--workers", "2", "--frames", "16",
            "--size", "64", "--quiet"]


def pretrain_command(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--data", str(data), "--out", str(out), "--epochs", "400", *SMALL, *extra]


def ranks_of(launcher: int) -> set[int]:
    """The ranks below the launcher ``launcher`` (torchrun's command line names the module too)."""
    return {pid for pid in descendants(launcher)
            if "-m fgmm_lib pretrain" in (line := command_line(pid)) and "--nproc-per-node" not in line}


# ------------------------------------------------------------------------------ processes left running


@pytest.mark.parametrize("killed, signal_number", [("launcher", signal.SIGKILL), ("launcher", signal.SIGTERM),
                                                   ("torchrun", signal.SIGKILL)],
                         ids=["launcher-SIGKILL", "launcher-SIGTERM", "torchrun-SIGKILL"])
def test_two_process_pretrain_ends_with_its_launcher(data, tmp_path, killed, signal_number):
    """Killing the ``fgmm`` process of ``pretrain --nproc 2`` (or its torchrun) ends torchrun and both
    ranks; the last checkpoint is kept and can be resumed."""
    run = tmp_path / "run"
    process = start(*pretrain_command(data, run, "--nproc", "2"))
    try:
        wait_for(lambda: (run / "checkpoint.pt").is_file(), 120, "the first checkpoint", process)
        group = descendants(process.pid)
        assert len(ranks_of(process.pid)) == 2, {pid: command_line(pid) for pid in group}
        torchrun = [pid for pid in group if "--nproc-per-node" in command_line(pid)]
        os.kill(process.pid if killed == "launcher" else torchrun[0], signal_number)
        process.wait(timeout=90)
        assert_all_end(group, timeout=30)
        _, err = process.communicate(timeout=30)
        if signal_number == signal.SIGTERM:
            assert process.returncode == 128 + signal.SIGTERM
            one_line(err, str(run), "--resume")
    finally:
        stop(process)
    resumed = run_fgmm("pretrain", "--data", str(data), "--out", str(run), "--epochs", "400", *SMALL,
                       "--max-steps", "1", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not lock_file(run).exists()


def test_ctrl_c_stops_a_two_process_pretrain_in_one_line(data, tmp_path):
    run = tmp_path / "run"
    process = start(*pretrain_command(data, run, "--nproc", "2"))
    try:
        wait_for(lambda: (run / "checkpoint.pt").is_file(), 120, "the first checkpoint", process)
        group = descendants(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=90)
        assert_all_end(group, timeout=30)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130, err[-3000:]
        one_line(err, "Ctrl-C", str(run), "--resume")
    finally:
        stop(process)
    assert not lock_file(run).exists()
    assert not [path.name for path in run.iterdir() if path.name.startswith(".")]
    assert load_checkpoint(run / "checkpoint.pt")["step"] >= 1


def test_ctrl_c_stops_a_pretrain_in_one_line(data, tmp_path):
    run = tmp_path / "run"
    process = start(*pretrain_command(data, run))
    try:
        wait_for(lambda: (run / "checkpoint.pt").is_file(), 60, "the first checkpoint", process)
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        stop(process)
    assert process.returncode == 130
    one_line(err, "Ctrl-C", str(run), "--resume")
    assert not lock_file(run).exists()


def test_a_killed_import_leaves_no_worker_or_resource_tracker(long_import, tmp_path):
    out = tmp_path / "imported"
    process = start(*import_command(long_import, out))
    try:
        def workers() -> list[int]:
            return [pid for pid in descendants(process.pid) if "multiprocessing" in command_line(pid)]

        wait_for(lambda: len(workers()) >= 3, 60, "two workers and the resource tracker", process)
        group = descendants(process.pid)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert_all_end(group, timeout=15)
    finally:
        stop(process)


def test_ctrl_c_stops_an_import_in_one_line(long_import, tmp_path):
    out = tmp_path / "imported"
    process = start(*import_command(long_import, out))
    try:
        wait_for(lambda: (tmp_path / ".imported.import" / "done.jsonl").is_file(), 60, "decoded clips", process)
        group = descendants(process.pid)
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        assert_all_end(group, timeout=15)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 130, err[-3000:]
        one_line(err, "Ctrl-C", ".imported.import", "same command again")
    finally:
        stop(process)
    assert not out.exists() and (tmp_path / ".imported.import").is_dir()
    assert not lock_file(out).exists() and not lock_file(tmp_path / ".imported.import").exists()


# ------------------------------------------------------------------------------ one writer per folder


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the lock of ``folder`` until it is killed."""
    code = ("import sys, time\nfrom fgmm_lib.io import output_lock\n"
            "with output_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(folder)], env=environment(), cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_pretrain_on_the_same_folder_is_refused(data, tmp_path):
    run = tmp_path / "run"
    first = start(*pretrain_command(data, run))
    try:
        wait_for(lambda: (run / "config.json").is_file(), 60, "the run's start", first)
        second = run_fgmm(*pretrain_command(data, run, "--seed", "1", "--max-steps", "1"))
        assert second.returncode == 2
        one_line(second.stderr, str(run), f"pid {first.pid}")
        assert first.poll() is None
    finally:
        stop(first)


@pytest.mark.parametrize("locked", ["out", "work"])
def test_an_import_refuses_a_folder_that_another_process_writes(long_import, tmp_path, capsys, locked):
    out = tmp_path / "imported"
    folder = out if locked == "out" else tmp_path / ".imported.import"
    holder = hold_lock(folder)
    try:
        code = cli.main(import_command(long_import, out))
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    one_line(err, str(folder), f"pid {holder.pid}")
    assert not out.exists() and not (tmp_path / ".imported.import").exists()


def test_generate_takes_over_the_lock_of_a_killed_writer(tmp_path, capsys):
    out = tmp_path / "data"
    holder = hold_lock(out)
    tiny = ["--clips", "40", "--frames", "4", "--size", "16", "--quiet"]
    try:
        assert cli.main(["generate", "--out", str(out), *tiny]) == 2
        one_line(capsys.readouterr().err, str(out), f"pid {holder.pid}")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock_file(out).read_text().split()[0] == str(holder.pid)  # left behind by the killed holder
    assert cli.main(["generate", "--out", str(out), *tiny]) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_the_lock_is_released_and_resume_works_after_a_run(data, finished_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    assert cli.main(["pretrain", "--data", str(data), "--out", str(run), "--epochs", "1", *SMALL, "--resume"]) == 0
    assert cli.main(["pretrain", "--data", str(data), "--out", str(run), "--epochs", "2", *SMALL, "--resume"]) == 2
    assert "epochs" in capsys.readouterr().err  # refused for its config, not for a lock
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]
    with output_lock(run), pytest.raises(FolderBusyError, match=f"pid {os.getpid()}"):  # noqa: SIM117
        with output_lock(tmp_path / "." / "run"):  # the same folder by another path
            pass
    assert not lock_file(run).exists()


# ------------------------------------------------------------------------------ refused before any work


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA runs the triton backend")
@pytest.mark.parametrize("nproc", ["1", "2"])
def test_triton_backend_without_a_gpu_is_refused_before_anything_is_written(data, tmp_path, capsys, monkeypatch,
                                                                             nproc):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    run = tmp_path / "run"
    code = cli.main(["pretrain", "--data", str(data), "--out", str(run), "--epochs", "1", *SMALL[:-3], "--quiet",
                     "--backend", "triton", "--nproc", nproc])
    assert code == 2
    one_line(capsys.readouterr().err, "backend 'triton'", "CUDA")
    assert sorted(tmp_path.iterdir()) == []


def test_resume_names_a_corrupt_config_and_checkpoint_in_one_line(data, finished_run, tmp_path, capsys):
    corrupt_config = tmp_path / "config"
    shutil.copytree(finished_run, corrupt_config)
    (corrupt_config / "config.json").write_text('{"train": {"data": ')
    code = cli.main(["pretrain", "--data", str(data), "--out", str(corrupt_config), "--epochs", "1", *SMALL,
                     "--resume"])
    assert code == 2
    one_line(capsys.readouterr().err, "corrupt config.json", str(corrupt_config / "config.json"))

    random_checkpoint = tmp_path / "checkpoint"
    shutil.copytree(finished_run, random_checkpoint)
    (random_checkpoint / "checkpoint.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    code = cli.main(["pretrain", "--data", str(data), "--out", str(random_checkpoint), "--epochs", "1", *SMALL,
                     "--resume"])
    assert code == 2
    line = one_line(capsys.readouterr().err, str(random_checkpoint / "checkpoint.pt"), "corrupt")
    assert "weights_only" not in line
    assert json.loads((random_checkpoint / "config.json").read_text())["train"]["epochs"] == 1
