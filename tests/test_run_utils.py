"""run_utils.py, the run plumbing both scripts share: run folders, the progress line and interval metrics, the NaN
guard, Ctrl-C / SIGTERM, checkpoints, where the replay buffer lives, flag checks and the fast-path switch. Fast: no
environments and no networks beyond a Linear layer."""

import copy
import errno
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from brc_utils import distributed
from brc_utils import run as run_utils

CPU = torch.device("cpu")
SUMMARY = "a {losses/a:.1f} b {charts/b:.1f} c {charts/c:.1f}"


@dataclass
class Args(run_utils.RunArgs):
    """A script's Args as Run sees them: the run flags and a few of the algorithm's."""

    exp_name: str = "test"
    total_timesteps: int = 36_100
    log_interval: int = 100
    batch_size: Optional[int] = None
    gamma: float = 0.99
    critic_width: Optional[int] = None


class Clock:
    """Stands in for time.time() inside run_utils only, so that steps/s and the ETA are exact."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(run_utils, "time", types.SimpleNamespace(time=clock))
    return clock


@pytest.fixture
def signals():
    """Installs recording SIGINT / SIGTERM handlers for the test, so that a Run that failed to install its own makes
    the test fail instead of interrupting (or terminating) pytest; yields the signals they received."""
    received = []

    def record(signum, frame):
        received.append(signum)

    saved = {s: signal.signal(s, record) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    record.received = received
    try:
        yield record
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def wait_until(condition, seconds: float = 5.0) -> bool:
    """A signal sent to this process runs its Python handler in the main thread at the next check: wait for that."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def scalars(run_dir: str) -> dict:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


# ---- Run folders ----
def test_new_run_dir_never_reuses_a_folder():
    first, second = run_utils.new_run_dir("name"), run_utils.new_run_dir("name")
    assert (first, second) == ("name", "name+")
    assert os.path.isdir(os.path.join("runs", first)) and os.path.isdir(os.path.join("runs", second))


def test_new_run_dir_gives_racing_runs_a_folder_each():
    """Eight threads ask for the same name at once, ten times over (a check-then-create race shows up in most)."""
    for attempt in range(10):
        start = threading.Barrier(8, timeout=10)

        def create(_) -> str:
            start.wait()  # all eight call new_run_dir at once
            return run_utils.new_run_dir(f"same{attempt}")

        with ThreadPoolExecutor(8) as pool:
            names = list(pool.map(create, range(8)))  # re-raises a thread's exception
        assert sorted(names) == [f"same{attempt}" + "+" * i for i in range(8)]
    assert len(os.listdir("runs")) == 80


# ---- The run: progress line, interval metrics, NaN guard, signals ----
def test_progress_prints_and_logs_the_interval_means(clock, signals, capsys):
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a", "charts/b"], CPU) as run:
        assert run.name == "label__test__1__19700101-001640" and os.path.isdir(run.dir)
        run.start()
        run.add_metrics(torch.tensor([1.0, 10.0]))
        run.add_metrics(torch.tensor([3.0, 30.0]))
        clock.now += 10  # 100 steps in 10 s: 10 steps/s, and 36,000 steps to go take an hour
        run.progress(100, {"charts/c": 5.0}, SUMMARY)
        first = capsys.readouterr().out
        clock.now += 10
        run.progress(200, {"charts/c": 6.0}, SUMMARY)  # no update in this interval: no summary
        second = capsys.readouterr().out
    assert first.startswith("step 100/36,100 | 10.0 steps/s | ETA 1h00m | "), first
    assert first.rstrip().endswith("a 2.0 b 20.0 c 5.0"), first
    assert second.strip() == "step 200/36,100 | 10.0 steps/s | no updates yet; ETA once they run", second
    assert signal.getsignal(signal.SIGINT) is signals and signal.getsignal(signal.SIGTERM) is signals

    logged = scalars(run.dir)  # readable once __exit__ closed the writer
    assert logged["losses/a"] == [(100, 2.0)] and logged["charts/b"] == [(100, 20.0)]
    assert logged["charts/c"] == [(100, 5.0)]
    assert logged["charts/SPS"] == [(100, 10.0), (200, 10.0)]
    assert [step for step, _ in logged["charts/updates_per_second"]] == [100, 200]
    assert [value for _, value in logged["charts/updates_per_second"]] == pytest.approx([0.2, 0.0])


def test_the_eta_comes_from_the_average_rate_since_the_updates_started(clock, signals, capsys):
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        clock.now += 1
        run.progress(1000, {}, "a {losses/a:.0f}")  # random actions: 1000 steps/s say nothing about what follows
        run.add_metrics(torch.tensor([1.0]))
        clock.now += 100
        run.progress(2000, {}, "a {losses/a:.0f}")  # learning: 10 steps/s, 34,100 steps to go
        run.add_metrics(torch.tensor([1.0]))
        clock.now += 50
        run.progress(2003, {}, "a {losses/a:.0f}")  # 3 steps, then a 50-second evaluation
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 1,000/36,100 | 1,000.0 steps/s | no updates yet; ETA once they run"
    assert lines[1] == "step 2,000/36,100 | 10.0 steps/s | ETA 0h56m | a 1"
    assert lines[2] == "step 2,003/36,100 | 16.7 s/step | ETA 1h24m | a 1"
    # 3 steps in 50 s: 16.7 s each (not "0.1 steps/s"); the ETA from the rate since the updates started


def test_the_eta_ignores_the_random_phase_when_updates_start_on_a_progress_line(clock, signals, capsys):
    """--learning-starts 1000 with --log-interval 1000: the first update runs at the step of a progress line. The
    loop asks progress_due every step, which notes where the updates started."""
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        clock.now += 1  # 999 random steps in a second
        run.add_metrics(torch.tensor([1.0]))  # the first update, at step 1000
        assert run.progress_due(1000)
        run.progress(1000, {}, "a {losses/a:.0f}")
        for step in range(1001, 2001):
            clock.now += 0.1  # learning: 10 steps/s, 34,100 steps to go after step 2000
            run.add_metrics(torch.tensor([1.0]))
            if run.progress_due(step):
                run.progress(step, {}, "a {losses/a:.0f}")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step 1,000/36,100 | 1,000.0 steps/s | ETA from the next line on | a 1"
    assert lines[-1] == "step 2,000/36,100 | 10.0 steps/s | ETA 0h56m | a 1"  # not 0h28m, from 2000 steps in 101 s


def test_a_non_finite_loss_stops_the_run_with_its_state_saved(signals):
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a", "charts/b"], CPU) as run:
        run.start()
        run.add_metrics(torch.tensor([1.0, 2.0]))
        run.check_finite(6, lambda: pytest.fail("saved a checkpoint although every loss was finite"))
        run.add_metrics(torch.tensor([math.nan, 1.0]))
        with pytest.raises(SystemExit, match="non-finite loss at step 7") as stop:
            run.check_finite(7, lambda: {"x": torch.zeros(1)})
    path = os.path.join("runs", run.name, "nan_step7.pt")
    assert path in str(stop.value)
    assert [f for f in os.listdir(run.dir) if f.endswith(".pt")] == ["nan_step7.pt"]  # none for step 6
    assert torch.load(path, weights_only=True).keys() == {"x", "checksum"}
    assert torch.equal(torch.load(path, weights_only=True)["x"], torch.zeros(1))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_first_signal_asks_to_stop_and_a_later_one_quits(signum, clock, signals, capsys):
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        assert not run.stop_requested
        os.kill(os.getpid(), signum)  # first Ctrl-C (or SIGTERM): finish the step, save, stop
        assert wait_until(lambda: run.stop_requested), "the Run did not handle the signal"
        assert "stopping after this step" in capsys.readouterr().out
        path = run.finish(5, lambda: {"global_step": 5})
        out = capsys.readouterr().out
        assert f"checkpoint saved at step 5: {path} (" in out
        assert f"stopped at step 5; continue with: python bro_test.py --resume {path}" in out
        assert torch.load(path, weights_only=True)["global_step"] == 5
        clock.now += run_utils.SIGNAL_GRACE  # the run visibly went on: asked again, on purpose
        with pytest.raises(KeyboardInterrupt):  # quit at once
            os.kill(os.getpid(), signum)
            wait_until(lambda: False, seconds=5)
    assert signals.received == []  # the Run's handlers took both signals...
    assert signal.getsignal(signal.SIGINT) is signals and signal.getsignal(signal.SIGTERM) is signals  # ...till exit


def test_one_ctrl_c_delivered_twice_still_saves(clock, signals, capsys):
    """`timeout 300 python bro_mt.py` and a terminal's Ctrl-C: SIGINT from the terminal, and a millisecond later the
    copy `timeout` forwards. Both are one request to stop and save; so is a repeat within the grace period."""
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        assert wait_until(lambda: run.stop_requested)
        wait_until(lambda: False, seconds=0.1)  # a KeyboardInterrupt would come here
        clock.now += run_utils.SIGNAL_GRACE / 2
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. SIGTERM from a launcher right after: still the same request
        wait_until(lambda: False, seconds=0.1)
        path = run.finish(7, lambda: {"global_step": 7})
    out = capsys.readouterr().out
    assert out.count("SIGINT: stopping after this step") == 1 and "SIGTERM" not in out, out
    assert "Ctrl-C again, a second from now or later, quits without saving" in out
    assert torch.load(path, weights_only=True)["global_step"] == 7


def test_a_signal_during_set_up_stops_at_once_and_leaves_no_empty_run_folder(signals):
    with pytest.raises(SystemExit, match="SIGTERM during set-up: stopped before training, nothing to save"):
        with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
            assert os.path.isdir(run.dir)
            os.kill(os.getpid(), signal.SIGTERM)  # e.g. while a 64M critic is being initialised
            wait_until(lambda: False, seconds=5)
    assert not os.path.exists(run.dir) and os.listdir("runs") == []
    assert signal.getsignal(signal.SIGTERM) is signals and signals.received == []


def test_progress_is_due_every_log_interval_and_at_least_once_a_minute(clock, signals, capsys):
    with run_utils.Run("bro_test.py", Args(log_interval=100), "label", ["losses/a"], CPU) as run:
        run.start()
        clock.now += 59
        assert [run.progress_due(step) for step in (99, 100, 200)] == [False, True, True]
        clock.now += 1  # a minute since the last line, in the middle of an interval
        assert run.progress_due(137) and not run.progress_due(195)  # 195: the regular line at 200 is about to come
        run.progress(137, {}, "")
        assert not run.progress_due(138)


def test_save_says_where_and_how_big(signals, capsys):
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        run.save(300, lambda: {"weights": torch.zeros(2**18)})  # 1 MiB of float32
        out = capsys.readouterr().out
    assert out.startswith(f"checkpoint saved at step 300: {run.checkpoint_path} (1.0 MiB, "), out


def test_checkpoint_pt_is_a_copy_where_the_filesystem_has_no_hard_links(signals, monkeypatch):
    def no_hard_links(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(run_utils.os, "link", no_hard_links)
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        assert run.save(100, lambda: {"global_step": 100})
        assert run.save(200, lambda: {"global_step": 200})
    kept = ["checkpoint.pt", "checkpoint_step200.pt", "run.lock"]  # no partial copy left
    assert sorted(f for f in os.listdir(run.dir) if "tfevents" not in f) == kept
    assert run_utils.load_checkpoint(run.checkpoint_path, "test", {"global_step"})["global_step"] == 200


def test_the_final_save_is_skipped_when_a_periodic_save_holds_that_step(signals, capsys):
    states = []
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        run.save(300, lambda: states.append(300) or {"global_step": 300})
        path = run.finish(300, lambda: states.append("final") or {"global_step": 300})
    assert states == [300] and capsys.readouterr().out.count("checkpoint saved at step 300") == 1
    assert path == run.checkpoint_path and torch.load(path, weights_only=True)["global_step"] == 300


def test_partial_files_of_killed_processes_are_removed_at_start_up(signals, capsys):
    """SIGKILL during a save leaves its temporary file; the next run in the folder removes those of dead processes."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    folder = os.path.join("runs", "r")
    os.makedirs(folder)
    stale = [f"checkpoint_step60.pt.{dead.pid}.140.tmp", f"checkpoint.pt.{dead.pid}.link"]
    alive = [f"checkpoint_step60.pt.{os.getppid()}.140.tmp", "notes.tmp", "checkpoint_step60.pt"]
    for name in stale + alive:
        open(os.path.join(folder, name), "wb").close()
    with run_utils.Run("bro_test.py", Args(), "l", ["losses/a"], CPU, resume={"run_name": "r", "global_step": 60}):
        pass
    assert sorted(f for f in os.listdir(folder) if "tfevents" not in f) == sorted(alive + ["run.lock"])
    assert "removed 2 partial file(s) that a stopped process left in runs/r" in capsys.readouterr().out


def test_a_resume_never_replaces_a_step_file_it_did_not_write(signals):
    """Run to 120 (saving 60 and 120), then continue from step 60 again: the second branch's step-120 checkpoint
    goes beside the first one's (checkpoint_step120+.pt), and checkpoint.pt points at the latest save."""
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as first:
        first.start()
        first.save(60, lambda: {"global_step": 60})
        first.save(120, lambda: {"global_step": 120, "branch": 1})
        first.save(120, lambda: {"global_step": 120, "branch": 1})  # its own file: replaced, not branched
    folder = first.dir
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pt")) == ["checkpoint.pt", "checkpoint_step120.pt"]
    with run_utils.Run(
        "bro_test.py", Args(), "label", ["losses/a"], CPU, resume={"run_name": first.name, "global_step": 60}
    ) as second:
        second.start()
        second.save(120, lambda: {"global_step": 120, "branch": 2})
        second.save(150, lambda: {"global_step": 150, "branch": 2})  # removes its own step-120 file only
        with pytest.raises(SystemExit, match="nan_step150"):
            second.add_metrics(torch.tensor([math.nan]))
            second.check_finite(150, lambda: {"branch": 2})
    assert torch.load(os.path.join(folder, "checkpoint_step120.pt"), weights_only=True)["branch"] == 1
    kept = ["checkpoint.pt", "checkpoint_step120.pt", "checkpoint_step150.pt", "nan_step150.pt"]
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pt")) == kept
    assert torch.load(first.checkpoint_path, weights_only=True)["global_step"] == 150

    with run_utils.Run(
        "bro_test.py", Args(), "label", ["losses/a"], CPU, resume={"run_name": first.name, "global_step": 60}
    ) as third:
        third.start()
        third.save(120, lambda: {"global_step": 120, "branch": 3})
        with pytest.raises(SystemExit, match=r"nan_step150\+\.pt"):  # a NaN that recurs: both files kept
            third.add_metrics(torch.tensor([math.nan]))
            third.check_finite(150, lambda: {"branch": 3})
    assert torch.load(os.path.join(folder, "checkpoint_step120.pt"), weights_only=True)["branch"] == 1
    assert torch.load(os.path.join(folder, "checkpoint_step120+.pt"), weights_only=True)["branch"] == 3
    assert torch.load(os.path.join(folder, "nan_step150.pt"), weights_only=True)["branch"] == 2


def test_a_second_process_cannot_continue_a_run_folder_in_use(signals):
    """Two resumers of one run folder would remove each other's checkpoints and mix their logs: the second is refused,
    naming the holder, until the first exits. (In one process two opens of the lock file conflict as two processes.)"""
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as first:
        first.start()
        resume = {"run_name": first.name, "global_step": 0}
        with pytest.raises(SystemExit, match=f"is in use: process {os.getpid()} is training it") as refused:
            run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU, resume=resume)
        assert "Wait for it to end" in str(refused.value) and "resume from another folder" in str(refused.value)
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU, resume=resume) as second:  # released
        assert open(os.path.join(second.dir, "run.lock")).read() == f"{os.getpid()}\n"


def test_the_lock_of_a_killed_run_does_not_block_a_resume(signals):
    """SIGKILL (or a crash) leaves run.lock behind, but the kernel dropped the flock with the process."""
    os.makedirs(os.path.join("runs", "killed"))
    hold = (
        "import fcntl, time; f = open('runs/killed/run.lock', 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
        "f.write('12345'); f.flush(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(SystemExit, match="process 12345 is training it"):
            run_utils.Run(
                "bro_test.py", Args(), "l", ["losses/a"], CPU, resume={"run_name": "killed", "global_step": 0}
            )
    finally:
        holder.kill()
        holder.wait(timeout=10)
    with run_utils.Run("bro_test.py", Args(), "l", ["losses/a"], CPU, resume={"run_name": "killed", "global_step": 0}):
        pass


def test_a_run_folder_that_cannot_be_written_is_named(signals, monkeypatch):
    """A resume in a read-only run folder: one line that says what to do, not SummaryWriter's OSError traceback.
    (Tests may run as root, who can write anywhere, so the refusal is faked.)"""
    os.makedirs(os.path.join("runs", "readonly"))
    real_open = open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(os.path.join("runs", "readonly")):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(SystemExit, match=r"cannot write to the run folder runs/readonly \(Permission denied\); make"):
        run_utils.Run("bro_test.py", Args(), "l", ["losses/a"], CPU, resume={"run_name": "readonly", "global_step": 0})


def test_warn_if_slow_only_on_a_cpu_and_only_when_slow(capsys):
    run_utils.warn_if_slow(CPU, 1.0, "try a smaller critic")
    run_utils.warn_if_slow(torch.device("cuda"), 5000.0, "try a smaller critic")
    assert capsys.readouterr().out == ""
    run_utils.warn_if_slow(CPU, 3600.0 * torch.get_num_threads(), "try a smaller critic")
    out = capsys.readouterr().out
    assert f"~{3600 * torch.get_num_threads():,} GFLOP of updates" in out, out
    assert "at most ~0.017 steps/s" in out and "meant for a GPU; on a CPU try a smaller critic" in out, out
    run_utils.warn_if_slow(CPU, 3600.0 * torch.get_num_threads(), "use fewer --total-timesteps", 60 * 1000)
    assert "at most ~0.017 steps/s (60,000 steps: 1,000 h or more)" in capsys.readouterr().out


def test_the_slow_cpu_warning_suggests_the_laptop_flags_not_yet_set(capsys, monkeypatch):
    """bro_atari.py on a CPU: the warning names the laptop command's flags (docs/atari.md) that a run has not set, with
    its time; once they are all set, fewer updates or steps. The laptop command itself does not warn."""
    import bro_atari

    monkeypatch.setattr(run_utils, "available_memory", lambda device: 2**40)
    game = types.SimpleNamespace(num_actions=18)
    laptop = (
        "--env-ids RoadRunner --critic-width 128 --encoder-width 4 --batch-size 32 --update-every 4 --learning-starts "
        "5000 --total-timesteps 50000 --epsilon-decay-steps 20000 --repeat-action-probability 0 --eval-interval 10000 "
        "--eval-episodes 5"
    )
    minutes = f"(the laptop command, ~{bro_atari.LAPTOP_MINUTES} minutes on one core: docs/atari.md)"
    cases = [
        ({}, f"try {laptop} {minutes}"),  # the defaults: ATARI_5, the 64M head, 1,000,000 steps
        (dict(model_size="1M", batch_size=32), f"try {laptop.replace(' --batch-size 32', '')} {minutes}"),
        (dict(bro_atari.LAPTOP_FLAGS, updates_per_step=80), "use fewer --updates-per-step or --total-timesteps"),
        (bro_atari.LAPTOP_FLAGS, None),
    ]
    for flags, hint in cases:
        args = bro_atari.Args(cuda=False, threads=1, **flags)
        width = args.critic_width or bro_atari.MODEL_SIZES[args.model_size]
        config = {"env_ids": args.env_ids, "critic_width": width, "encoder_width": args.encoder_width}
        bro_atari.set_up_device(args, None, config, [game], distributed.shard_tasks(1, args.batch_size or 64, 1))
        out = capsys.readouterr().out
        assert (f"on a CPU {hint}." in out) if hint else "warning" not in out, out
    repo = os.path.join(os.path.dirname(__file__), "..")
    docs = open(os.path.join(repo, "docs", "atari.md")).read()
    assert f"python bro_atari.py {laptop}\n" in docs  # the command the warning refers to, word for word
    source = open(os.path.join(repo, "bro_atari.py")).read()
    description = " ".join(source[source.index('description = """') :].replace("\\\\", " ").split())
    assert f"python bro_atari.py {laptop} " in description  # --help's example


# ---- Checkpoints ----
def test_save_checkpoint_replaces_the_file_atomically(monkeypatch):
    path = os.path.join("runs", "r", "checkpoint.pt")
    run_utils.save_checkpoint(path, {"step": 1})  # creates the folder
    run_utils.save_checkpoint(path, {"step": 2})
    assert os.listdir(os.path.dirname(path)) == ["checkpoint.pt"]  # no .tmp left behind
    assert torch.load(path, weights_only=True)["step"] == 2

    def crash_while_writing(obj, file):
        with open(file, "wb") as f:
            f.write(b"half a checkp")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_while_writing)
    with pytest.raises(run_utils.CheckpointError, match="no space left on device while writing"):
        run_utils.save_checkpoint(path, {"step": 3})
    assert os.listdir(os.path.dirname(path)) == ["checkpoint.pt"]  # the partial file is gone...
    assert torch.load(path, weights_only=True)["step"] == 2  # ...and the previous checkpoint is intact


def test_save_checkpoint_checks_free_space_first(monkeypatch):
    path = os.path.join("runs", "r", "checkpoint.pt")
    run_utils.save_checkpoint(path, {"step": 1})
    monkeypatch.setattr(run_utils.shutil, "disk_usage", lambda folder: types.SimpleNamespace(free=2**20))
    big = {"step": 2, "weights": torch.zeros(2**20)}  # 4 MiB of float32
    with pytest.raises(
        run_utils.CheckpointError,
        match=r"no space left on device: the checkpoint needs ~5.2 MiB, 1.0 MiB free in runs/r$",
    ):
        run_utils.save_checkpoint(path, big)
    assert os.listdir(os.path.dirname(path)) == ["checkpoint.pt"] and torch.load(path)["step"] == 1


def test_check_checkpoint_space_warns_at_start_up_when_checkpoints_will_not_fit(monkeypatch, signals, capsys):
    free = {"bytes": 2**30}
    monkeypatch.setattr(run_utils.shutil, "disk_usage", lambda folder: types.SimpleNamespace(free=free["bytes"]))
    assert run_utils.check_checkpoint_space(".", 100 * 2**20)  # two of ~106 MiB fit in 1 GiB
    assert capsys.readouterr().out == ""
    free["bytes"] = 150 * 2**20
    assert not run_utils.check_checkpoint_space(".", 100 * 2**20)
    out = capsys.readouterr().out
    assert out.startswith("warning: a checkpoint of this run takes ~106.0 MiB, and 150.0 MiB is free in .: one fits")
    assert "the second fails" in out
    free["bytes"] = 50 * 2**20
    assert not run_utils.check_checkpoint_space(".", 100 * 2**20)
    assert "no checkpoint will fit: every save, the final one included, will fail" in capsys.readouterr().out
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU, checkpoint_bytes=100 * 2**20) as run:
        assert f"is free in {run.dir}: no checkpoint will fit" in capsys.readouterr().out  # at start-up


def test_two_savers_of_one_path_at_once_do_not_collide():
    path = os.path.join("runs", "r", "checkpoint.pt")
    states = [{"who": k, "weights": torch.full((2**16,), float(k))} for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda state: run_utils.save_checkpoint(path, state), states))  # re-raises any failure
    saved = run_utils.load_checkpoint(path, "test", {"who"})  # one of them, whole, with a matching checksum
    assert torch.equal(saved["weights"], torch.full((2**16,), float(saved["who"])))
    assert os.listdir(os.path.dirname(path)) == ["checkpoint.pt"]


def test_a_damaged_checkpoint_is_refused_by_its_checksum():
    path = "checkpoint.pt"
    run_utils.save_checkpoint(path, {"step": 7, "weights": torch.randn(2**18)})  # 1 MiB, the file is mostly this
    assert run_utils.load_checkpoint(path, "test", {"step"})["step"] == 7
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])  # 64 flipped bytes
    open(path, "wb").write(bytes(data))
    assert torch.load(path, weights_only=True)["step"] == 7  # torch itself notices nothing
    with pytest.raises(SystemExit, match="does not match its checksum: the file was damaged"):
        run_utils.load_checkpoint(path, "test", {"step"})


def test_a_failed_save_warns_during_the_run_and_stops_it_at_the_end(signals, monkeypatch, capsys):
    with run_utils.Run("bro_test.py", Args(), "label", ["losses/a"], CPU) as run:
        run.start()
        assert run.save(100, lambda: {"global_step": 100})
        monkeypatch.setattr(run_utils.shutil, "disk_usage", lambda folder: types.SimpleNamespace(free=0))
        assert not run.save(200, lambda: {"global_step": 200})  # periodic: the run goes on
        out = capsys.readouterr().out
        assert "warning: checkpoint at step 200 NOT saved: no space left on device" in out, out
        assert f"The last good checkpoint: {run.checkpoint_path}; the run goes on" in out
        with pytest.raises(SystemExit, match="checkpoint at step 300 NOT saved: no space left on device"):
            run.finish(300, lambda: {"global_step": 300})
        assert torch.load(run.checkpoint_path, weights_only=True)["global_step"] == 100


def test_checkpoints_are_due_every_save_every_steps_and_every_save_minutes(clock, signals):
    with run_utils.Run("bro_test.py", Args(save_every=50, save_minutes=30), "label", ["losses/a"], CPU) as run:
        run.start()
        assert [run.save_due(step) for step in (49, 50, 100)] == [False, True, True]
        clock.now += 30 * 60 - 1
        assert not run.save_due(51)
        clock.now += 1  # half an hour since the last save
        assert run.save_due(51)
        run.save(51, lambda: {"global_step": 51})
        assert not run.save_due(52)
    for never in (0, math.inf):
        with run_utils.Run("bro_test.py", Args(save_every=0, save_minutes=never), "other", ["a"], CPU) as run:
            clock.now += 10**6
            assert not run.save_due(100)


def test_load_checkpoint_says_what_is_wrong():
    keys = {"config", "global_step"}
    with pytest.raises(SystemExit, match=r"^--resume missing\.pt: no such file$"):
        run_utils.load_checkpoint("missing.pt", "bro_mt", keys)

    with open("garbage.pt", "wb") as f:
        f.write(b"\x00 not a checkpoint \xff" * 10)
    with pytest.raises(SystemExit, match="--init-from garbage.pt: not a readable bro_mt checkpoint") as error:
        run_utils.load_checkpoint("garbage.pt", "bro_mt", keys, flag="--init-from")
    assert "truncated or corrupt" in str(error.value)

    torch.save({"config": {}, "global_step": 3, "weights": torch.zeros(1000)}, "full.pt")
    with open("full.pt", "rb") as f:
        half = f.read()[: os.path.getsize("full.pt") // 2]
    with open("truncated.pt", "wb") as f:
        f.write(half)
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        run_utils.load_checkpoint("truncated.pt", "bro_mt", keys)

    torch.save({"config": {}}, "partial.pt")
    with pytest.raises(SystemExit, match=r"partial\.pt: not a bro_atari checkpoint \(missing \['global_step'\]\)"):
        run_utils.load_checkpoint("partial.pt", "bro_atari", keys)
    torch.save(torch.zeros(2), "tensor.pt")  # not even a dict
    with pytest.raises(SystemExit, match=r"missing \['config', 'global_step'\]"):
        run_utils.load_checkpoint("tensor.pt", "bro_mt", keys)

    assert run_utils.load_checkpoint("full.pt", "bro_mt", keys)["global_step"] == 3


def test_a_checkpoint_without_checksum_loads_with_a_warning(capsys):
    torch.save({"global_step": 3}, "old.pt")  # as checkpoints written before checksums
    assert run_utils.load_checkpoint("old.pt", "bro_mt", {"global_step"})["global_step"] == 3
    assert (
        capsys.readouterr().out
        == "warning: --resume old.pt has no checksum (it was written before checkpoints had one): not verified\n"
    )
    run_utils.save_checkpoint("new.pt", {"global_step": 3})
    run_utils.load_checkpoint("new.pt", "bro_mt", {"global_step"})
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("step", [-1, 2.5, True, "60", None])
def test_resume_refuses_a_checkpoint_without_args_or_with_a_bad_step(step):
    run_utils.save_checkpoint("no_args.pt", {"global_step": 60, "config": {}})
    with pytest.raises(SystemExit, match=r"no_args\.pt: the checkpoint holds no 'args', the flags of its run"):
        run_utils.load_for_resume(Args(resume="no_args.pt"), "bro_test", {"global_step"})
    run_utils.save_checkpoint("bad_step.pt", {"global_step": step, "args": asdict(Args())})
    with pytest.raises(SystemExit, match=f"bad_step\\.pt: its global_step {re.escape(repr(step))} is not a step count"):
        run_utils.load_for_resume(Args(resume="bad_step.pt"), "bro_test", {"global_step"})


def test_a_flag_given_at_its_default_is_not_overridden_by_the_checkpoint(monkeypatch, capsys):
    """`--gamma 0.99 --resume` of a gamma-0.9 run: 0.99 is the default, but it was given, so the resume is refused
    rather than silently training with 0.9. A given flag that a resume may change (--log-interval) keeps its value."""
    saved = asdict(Args(gamma=0.9, log_interval=50, critic_width=64))
    run_utils.save_checkpoint("c.pt", {"global_step": 60, "args": saved})

    def resume(*command_line, program="/home/me/brc/bro_test.py"):
        monkeypatch.setattr(sys, "argv", [program, *command_line, "--resume", "c.pt"])
        return run_utils.load_for_resume(Args(resume="c.pt"), "bro_test", {"global_step"})[0]

    for spelling in (["--gamma", "0.99"], ["--gamma=0.99"], ["--gamma", "0.99", "--no-track"]):
        with pytest.raises(SystemExit, match=r"--gamma 0\.99 \(the checkpoint's run used --gamma 0\.9\)"):
            resume(*spelling)
    args = resume("--log_interval", "100", "--no-track")
    assert (args.log_interval, args.gamma, args.critic_width) == (100, 0.9, 64)  # given; restored; restored
    args = resume("--gamma", "0.99", program="pytest")  # main() called from Python: sys.argv is not the script's
    assert (args.log_interval, args.gamma) == (50, 0.9)
    assert capsys.readouterr().out.splitlines() == [
        "flags from the checkpoint: --gamma 0.9 --critic-width 64",  # --log-interval 100 was given
        "flags from the checkpoint: --log-interval 50 --gamma 0.9 --critic-width 64",
    ]


def test_resume_of_a_folder_without_checkpoint_pt_takes_its_newest_valid_step_file(capsys):
    folder = os.path.join("runs", "r")
    for age, step in [(3, 120), (2, 60), (1, 180)]:  # step 60 was written after 120: a resume from an older one
        path = os.path.join(folder, f"checkpoint_step{step}.pt")
        run_utils.save_checkpoint(path, {"global_step": step})
        os.utime(path, (1000 - age, 1000 - age))
    with open(os.path.join(folder, "checkpoint_step180.pt"), "wb") as f:
        f.write(b"half a checkp")  # the newest, damaged
    assert run_utils.load_checkpoint(folder, "bro_mt", {"global_step"})["global_step"] == 60
    out = capsys.readouterr().out
    assert out.startswith(f"--resume {folder}: it has no checkpoint.pt; continuing from its newest checkpoint, "), out
    assert "checkpoint_step60.pt; newer but refused: checkpoint_step180.pt (" in out and "truncated or corrupt" in out

    os.makedirs("empty")
    with pytest.raises(SystemExit, match="--resume empty: no checkpoint.pt and no usable checkpoint_step"):
        run_utils.load_checkpoint("empty", "bro_mt", {"global_step"})


def test_check_config_refuses_another_runs_checkpoint():
    saved = {"env_ids": ["a", "b"], "critic_width": 32}
    run_utils.check_config("c.pt", saved, dict(saved))
    run_utils.check_config("c.pt", saved, {"critic_width": 32})  # only this run's keys are compared
    with pytest.raises(SystemExit, match=r"c\.pt: the checkpoint's critic_width is 32 but this run's is 64"):
        run_utils.check_config("c.pt", saved, {"env_ids": ["a", "b"], "critic_width": 64})
    with pytest.raises(SystemExit, match=r"env_ids is \['a', 'b'\] but this run's is \['a'\]"):
        run_utils.check_config("c.pt", saved, {"env_ids": ["a"], "critic_width": 32})
    with pytest.raises(SystemExit, match="the checkpoint's bf16 is None but this run's is True"):
        run_utils.check_config("c.pt", saved, {"bf16": True})


def test_checkpoint_state_and_restore_state_continue_exactly():
    with torch.random.fork_rng(devices=[]):  # restore_state sets the global torch RNG: keep other tests' as it was
        torch.manual_seed(0)
        model = nn.Linear(3, 2)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.1)

        def train_step():
            optimizer.zero_grad()
            model(torch.randn(4, 3)).square().sum().backward()
            optimizer.step()

        train_step()
        log_alpha = torch.tensor(0.5, requires_grad=True)
        rng = np.random.default_rng(1)
        rng.random(5)
        run = types.SimpleNamespace(name="r", args=Args())
        stateful = {"model": model, "optimizer": optimizer, "log_alpha": log_alpha}
        state = run_utils.checkpoint_state(run, {"w": 3}, 42, stateful, rng, CPU, obs=np.arange(3.0), note="x")
        run_utils.save_checkpoint("c.pt", state)
        saved_model, saved_optimizer = copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())
        next_torch, next_numpy = torch.rand(3), rng.random()

        train_step()  # the run goes on after saving: none of it may leak into the checkpoint
        with torch.no_grad():
            log_alpha.add_(1.0)
        assert state["log_alpha"].item() == 0.5 and not state["log_alpha"].requires_grad  # a copy, not the tensor

        keys = {"version", "run_name", "config", "args", "global_step", "rng", "model", "optimizer", "log_alpha", "obs"}
        ckpt = run_utils.load_checkpoint("c.pt", "test", keys)  # weights_only=True: only plain types were saved
        assert (ckpt["run_name"], ckpt["config"], ckpt["global_step"]) == ("r", {"w": 3}, 42)
        assert ckpt["args"] == asdict(Args()) and ckpt["note"] == "x"
        assert torch.equal(ckpt["obs"], torch.arange(3.0, dtype=torch.float64))  # numpy arrays become tensors

        torch.manual_seed(123)
        fresh_model = nn.Linear(3, 2)
        fresh_optimizer = torch.optim.Adam(fresh_model.parameters(), lr=0.1)
        fresh_log_alpha = torch.tensor(0.0, requires_grad=True)
        fresh_rng = np.random.default_rng(99)
        fresh = {"model": fresh_model, "optimizer": fresh_optimizer, "log_alpha": fresh_log_alpha}
        run_utils.restore_state(ckpt, fresh, fresh_rng, CPU)

        for name, value in saved_model.items():
            assert torch.equal(fresh_model.state_dict()[name], value), name
        restored = fresh_optimizer.state_dict()
        assert restored["param_groups"] == saved_optimizer["param_groups"]
        for i, moments in saved_optimizer["state"].items():
            for name, value in moments.items():
                assert torch.equal(restored["state"][i][name], value), (i, name)
        assert fresh_log_alpha.item() == 0.5 and fresh_log_alpha.requires_grad  # in place: optimisers still hold it
        assert torch.equal(torch.rand(3), next_torch)
        assert fresh_rng.random() == next_numpy


def test_a_resume_with_another_thread_count_warns_that_it_is_not_bit_exact(capsys):
    before = torch.get_num_threads()
    model, rng = nn.Linear(2, 1), np.random.default_rng(0)
    run = types.SimpleNamespace(name="r", args=Args())
    try:
        with torch.random.fork_rng(devices=[]):
            torch.set_num_threads(2)
            ckpt = run_utils.checkpoint_state(run, {}, 5, {"model": model}, rng, CPU)
            run_utils.restore_state(ckpt, {"model": model}, rng, CPU)
            assert "warning" not in capsys.readouterr().out  # the same count: bit-exact
            torch.set_num_threads(1)
            run_utils.restore_state(ckpt, {"model": model}, rng, CPU)
            out = capsys.readouterr().out
            assert "warning: the checkpoint's run used 2 CPU threads and this one uses 1" in out, out
            assert "not be bit-exact" in out and "(--threads 2 makes it so)" in out
            run_utils.restore_state(ckpt, {"model": model}, rng, torch.device("cuda"))  # the update is not on a CPU
            assert "warning" not in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


# ---- Where the replay buffer lives ----
SMALLER = "--model-size or --batch-size"
REPLAY = "(2 tasks x 1,000 transitions)"


def test_place_replay_buffer(monkeypatch):
    free = {"cpu": 1000, "cuda": 1000}
    monkeypatch.setattr(run_utils, "available_memory", lambda device: free[device.type])
    cuda = torch.device("cuda")  # only a name here: available_memory is faked

    def place(device, model_bytes, buffer_bytes):
        return run_utils.place_replay_buffer(device, model_bytes, buffer_bytes, SMALLER, REPLAY)

    assert place(CPU, 300, 700) == CPU  # fits next to the model
    with pytest.raises(SystemExit, match=r"replay buffer \(2 tasks x 1,000 transitions\) needs .* but only .* left"):
        place(CPU, 300, 701)  # on a CPU there is nowhere else to go
    with pytest.raises(SystemExit, match=f"needs {run_utils.gib(701)} but only {run_utils.gib(700)} of RAM is left"):
        place(CPU, 300, 701)  # what the networks leave, not all the RAM
    with pytest.raises(SystemExit, match=f"the networks need .* but cpu has .* free; pick a smaller {SMALLER}$"):
        place(CPU, 1001, 0)

    assert place(cuda, 300, 700) == cuda
    free["cpu"] = 701
    assert place(cuda, 300, 701) == CPU  # not next to the model on the GPU: in RAM
    with pytest.raises(SystemExit, match="lower --buffer-size"):
        place(cuda, 300, 702)  # neither on the GPU nor in RAM
    with pytest.raises(SystemExit, match=f"pick a smaller {SMALLER}"):
        place(cuda, 1001, 0)


# ---- Flags and fast paths ----
def test_ranges_say_what_is_valid():
    gamma, one, positive = run_utils.Range(0, 1, high_open=True), run_utils.Range(1), run_utils.Range(0, low_open=True)
    assert (str(gamma), str(one), str(positive), str(run_utils.Range())) == (
        "in [0, 1)",
        "at least 1",
        "above 0",
        "a finite number",
    )
    assert [v in gamma for v in (0.0, 0.99, 1.0, -0.1, math.nan, math.inf)] == [True, True, False, False, False, False]
    assert 1 in one and 0 not in one and 1e-9 in positive and 0.0 not in positive
    never = run_utils.Range(0, inf_ok=True)  # --save-minutes inf
    assert math.inf in never and -math.inf not in never and math.nan not in never and math.inf not in one
    assert str(never) == "at least 0 (or inf)"
    assert [v for v in gamma.just_outside() if v == v] == [-1, 1] and math.isnan(gamma.just_outside()[0])
    args = Args(batch_size=0, gamma=0.5, critic_width=None, log_interval=0)
    with pytest.raises(SystemExit) as error:
        run_utils.check_flags(args, {"batch_size": one, "gamma": gamma, "critic_width": one}, ["--a and --b clash"])
    assert str(error.value) == (  # the script's flags first, then RunArgs' (RUN_FLAG_RANGES)
        "invalid flags:\n  --a and --b clash\n  --batch-size 0: must be at least 1\n  --log-interval 0: must be at least 1"
    )
    assert run_utils.check_flags(Args(batch_size=1), {"batch_size": one}) is None


def test_fast_update_wraps_only_when_asked(monkeypatch):
    def update_step(batch):
        return batch

    assert run_utils.fast_update(update_step, compile=False, cudagraphs=False) is update_step
    graphed = run_utils.fast_update(update_step, compile=False, cudagraphs=True)  # records nothing until called
    assert isinstance(graphed, run_utils.CUDAGraphUpdate) and graphed.update_step is update_step

    # --compile, without paying for torch.compile here (tests/test_mt_fast.py compiles for real)
    inductor = types.SimpleNamespace(config=types.SimpleNamespace(fallback_random=False))
    monkeypatch.setattr(torch, "_inductor", inductor, raising=False)
    monkeypatch.setattr(torch, "compile", lambda fn: ("compiled", fn))
    assert run_utils.fast_update(update_step, compile=True, cudagraphs=False) == ("compiled", update_step)
    assert inductor.config.fallback_random  # compiled updates draw eager's random numbers


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graph_update_matches_eager():
    """Three warm-up updates, the recording, then replays: the same losses and weights as plain updates."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    batches = [(torch.randn(8, 4, device=device), torch.randn(8, 1, device=device)) for _ in range(7)]

    def learner():
        torch.manual_seed(1)
        model = nn.Linear(4, 1).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01, capturable=True)

        def update_step(batch):
            optimizer.zero_grad(set_to_none=True)
            loss = (model(batch[0]) - batch[1]).square().mean()
            loss.backward()
            optimizer.step()
            return loss.detach()

        return model, update_step

    eager_model, eager_step = learner()
    graph_model, graph_step = learner()
    graphed = run_utils.CUDAGraphUpdate(graph_step)
    for batch in batches:
        torch.testing.assert_close(graphed(batch), eager_step(batch))
    assert graphed.graph is not None
    for eager, graph in zip(eager_model.parameters(), graph_model.parameters()):
        torch.testing.assert_close(graph, eager)


def test_set_threads_one_for_small_updates_else_the_flag_or_torchs_default(monkeypatch):
    cpu, small, before = torch.device("cpu"), run_utils.SMALL_UPDATE_GFLOP / 2, torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        torch.set_num_threads(2)
        run_utils.set_threads(cpu, None, 2 * run_utils.SMALL_UPDATE_GFLOP)  # large: torch's default stays
        assert torch.get_num_threads() == 2
        run_utils.set_threads(cpu, None, small)
        assert torch.get_num_threads() == 1
        run_utils.set_threads(cpu, 3, small)  # --threads wins
        assert torch.get_num_threads() == 3
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's OMP_NUM_THREADS wins over the automatic rule
        run_utils.set_threads(cpu, None, small)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_more_threads_than_cores_gets_a_note(monkeypatch, capsys):
    before = torch.get_num_threads()
    monkeypatch.setattr(run_utils.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    try:
        run_utils.set_threads(torch.device("cpu"), 2, 10.0)
        assert capsys.readouterr().out == ""
        run_utils.set_threads(torch.device("cpu"), 3, 10.0)
        assert capsys.readouterr().out == (
            "note: --threads 3 on 2 CPU cores: threads beyond the cores take turns on them, which is usually slower "
            "than --threads 2\n"
        )
        run_utils.set_threads(torch.device("cuda"), 3, 10.0)  # the update is not on a CPU
        assert capsys.readouterr().out == ""
    finally:
        torch.set_num_threads(before)
