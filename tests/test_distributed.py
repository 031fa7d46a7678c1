"""Training on several processes (issue #23): task shards, the weighted gradient average, exact resume and faults.

Everything runs on the CPU with gloo on the loopback interface, two processes, tiny networks; every wait is bounded
so that a hung collective fails the test instead of stalling CI."""

import glob
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

import bro_mt
from brc_utils import distributed
from brc_utils import run as run_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
TASKS = ["cartpole-balance", "point_mass-easy", "reacher-easy"]  # 2 + 1 on two processes: an uneven shard
FLAGS = [
    "--critic-width", "32", "--batch-size", "32", "--learning-starts", "50", "--eval-interval", "100",
    "--eval-episodes", "1", "--log-interval", "50", "--max-episode-steps", "60", "--buffer-size", "1000",
    "--dist-timeout", "60",
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- Shards (no processes needed) ----
@pytest.mark.parametrize(
    "num_tasks, world, batch, sizes, batches",
    [(7, 2, 1024, [4, 3], [585, 439]), (4, 2, 256, [2, 2], [128, 128]), (5, 3, 10, [2, 2, 1], [4, 4, 2])],
)
def test_shards_are_contiguous_and_split_the_batch_by_tasks(monkeypatch, num_tasks, world, batch, sizes, batches):
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    shards = []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(distributed.shard_tasks(num_tasks, batch, seed=3))
    monkeypatch.setattr(distributed, "_share", 1.0)
    assert [s.size for s in shards] == sizes and [s.batch_size for s in shards] == batches
    assert [s.first for s in shards] == [sum(sizes[:r]) for r in range(world)] and shards[-1].stop == num_tasks
    assert shards[0].seed == 3 and len({s.seed for s in shards}) == world  # --seed itself where task 0 is


def test_more_processes_than_tasks_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(SystemExit, match="3 processes for 2 tasks.*--nproc-per-node 2"):
        distributed.shard_tasks(2, 256, seed=1)


def test_one_process_is_untouched():
    shard = distributed.shard_tasks(7, 1024, seed=5)
    assert (shard.first, shard.stop, shard.batch_size, shard.seed, shard.world_size) == (0, 7, 1024, 5, 1)
    returns = (torch.arange(7.0).numpy(),)
    assert shard.gather(returns) is returns


# ---- One update on two processes equals one update on the union of their batches ----
SIZES = dict(obs_dim=6, action_dim=2, num_tasks=3, width=16)
LOCAL = {0: (slice(0, 8), [0, 1]), 1: (slice(8, 12), [2])}  # rank -> (its rows of the union batch, its tasks)


def union_batches(updates: int) -> list:
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(updates):
        task_ids = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 2, 2, 2, 2])
        obs = torch.randn(12, SIZES["obs_dim"], generator=generator, dtype=torch.float64)
        actions = torch.rand(12, SIZES["action_dim"], generator=generator, dtype=torch.float64) * 2 - 1
        rewards = torch.randn(12, generator=generator, dtype=torch.float64)
        next_obs = torch.randn(12, SIZES["obs_dim"], generator=generator, dtype=torch.float64)
        terminations = (torch.rand(12, generator=generator) < 0.2).double()
        batches.append(bro_mt.Batch(obs, actions, rewards, next_obs, terminations, task_ids))
    return batches


def train(batches: list, rows=slice(None)) -> dict:
    """Build the networks (float64, seed 0) and run bro_mt.update on each batch's `rows`; return the whole state."""
    torch.manual_seed(0)
    args = bro_mt.Args(critic_width=SIZES["width"], num_bins=11)
    nets = bro_mt.make_nets(args, "embedding", SIZES["obs_dim"], SIZES["action_dim"], 3, SIZES["width"], "cpu")
    distributed.broadcast_state(nets._asdict())
    masks, target_entropy = bro_mt.action_masks_and_target_entropy([1, 2, 2], SIZES["action_dim"], "cpu")
    support = torch.linspace(-10, 10, 11)
    scales = torch.tensor([0.5, 2.0, 1.0])
    for batch in batches:
        local = bro_mt.Batch(*(x[rows] for x in batch))
        bro_mt.update(local, nets, masks, target_entropy, scales, support, 0.99, 0.005)
    return {
        name: obj.state_dict() if hasattr(obj, "state_dict") else obj.detach() for name, obj in nets._asdict().items()
    }


def fixed_noise(t: torch.Tensor) -> torch.Tensor:
    """Stands in for the actor's torch.randn_like: each sample's noise depends on that sample alone, not on which
    process drew it or on how many samples came before."""
    return torch.sin(7 * t.detach() + 1)


def distributed_worker(rank: int, port: int, result_path: str):
    torch.set_default_dtype(torch.float64)
    torch.randn_like = fixed_noise
    os.environ.update(LOOPBACK | {"MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2"})
    torch.distributed.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=60))
    shard = distributed.shard_tasks(3, 12, seed=0)
    rows, tasks = LOCAL[rank]
    assert list(range(shard.first, shard.stop)) == tasks and shard.batch_size == rows.stop - rows.start
    state = train(union_batches(3), rows)
    states = distributed.gather_objects(state)
    if rank == 0:
        torch.save(states, result_path)
    torch.distributed.destroy_process_group()


def flatten(state, prefix="") -> dict:
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    return {k: v for key, value in items for k, v in flatten(value, f"{prefix}/{key}").items()}


def test_the_distributed_update_equals_one_process_on_the_union_of_the_batches(tmp_path, monkeypatch):
    """Two gloo processes own tasks {0, 1} (8 samples a batch) and {2} (4 samples); their weighted gradient average
    must give, after 3 updates, the weights, targets, optimiser moments and temperature of one process that updated
    on all 12 samples (float64), and the same on both processes, bit for bit."""
    result = str(tmp_path / "states.pt")
    context = mp.start_processes(
        distributed_worker, args=(free_port(), result), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + 120
    while not context.join(timeout=1):
        assert time.time() < deadline, "the two processes did not finish within 120 s"
    rank0, rank1 = (flatten(state) for state in torch.load(result, weights_only=False))
    monkeypatch.setattr(torch, "randn_like", fixed_noise)
    torch.set_default_dtype(torch.float64)
    try:
        reference, initial = flatten(train(union_batches(3))), flatten(train([]))
    finally:
        torch.set_default_dtype(torch.float32)
    assert rank0.keys() == rank1.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(rank0[key], rank1[key]), f"the processes differ in {key}"
        torch.testing.assert_close(rank0[key], value, rtol=1e-10, atol=1e-12, msg=key)
    moved = [key for key in initial if key.startswith("/critic/") and not torch.equal(initial[key], reference[key])]
    assert len(moved) > 5  # the updates changed the critic: the comparison is not between untouched weights


# ---- Whole runs under torchrun ----
def torchrun(tmp_path, *args: str, script: str = "bro_mt.py", timeout: int = 240) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [os.path.join(REPO, script), *args]
    env = os.environ | LOOPBACK
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def run_folder(tmp_path, exp_name: str) -> str:
    (folder,) = glob.glob(str(tmp_path / "runs" / f"*__{exp_name}__*"))
    return folder


def test_two_processes_resume_exactly_and_refuse_another_count(tmp_path):
    common = ["--env-ids", *TASKS, *FLAGS, "--save-buffer"]
    straight = torchrun(tmp_path, *common, "--total-timesteps", "200", "--exp-name", "straight")
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = straight.stdout
    assert "process 0: tasks 0-1 (cartpole-balance, point_mass-easy), 21 samples" in out, out
    assert "process 1: task 2 (reacher-easy), 11 samples" in out and "steps/s on 2 processes" in out
    assert "replay buffer (2 of 3 tasks on this process x 200 transitions)" in out  # rank 0 holds its tasks only
    assert "eval @ 200:" in out and "reacher-easy" in out.split("eval @ 200:")[1]  # rank 1's task, gathered
    half = torchrun(tmp_path, *common, "--total-timesteps", "110", "--exp-name", "half")
    assert half.returncode == 0, half.stderr[-3000:]
    folder = run_folder(tmp_path, "half")
    resumed = torchrun(tmp_path, "--resume", folder, "--total-timesteps", "200")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    def load(run: str, name: str) -> dict:
        return torch.load(os.path.join(run, name), weights_only=True)

    full = run_folder(tmp_path, "straight")
    for name in ["checkpoint.pt", "checkpoint_step200.rank1.pt"]:
        a, b = flatten(load(full, name)), flatten(load(folder, name))
        differing = [k for k in a if "args" not in k and "run_name" not in k and not torch.equal(a[k], b[k])]
        assert not differing, f"{name}: the resumed run differs in {differing[:5]}"
    assert load(folder, "checkpoint.pt")["world_size"] == 2

    command = [sys.executable, os.path.join(REPO, "bro_mt.py"), "--resume", folder]
    one = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert one.returncode != 0 and "trained by 2 process(es) and this one has 1" in one.stderr, one.stderr[-2000:]
    assert "torchrun --nproc-per-node 2" in one.stderr


def test_compile_and_async_envs_work_with_two_processes(tmp_path):
    """--compile (the all-reduce is a graph break between compiled pieces) and --async-envs (each process's update
    overlaps its own simulators) together; the losses stay finite and the run ends with the checkpoint saved."""
    done = torchrun(tmp_path, "--env-ids", *TASKS, *FLAGS, "--total-timesteps", "100", "--compile", "--async-envs")
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("step 100/")]
    assert lines and "on 2 processes" in lines[0] and "nan" not in lines[0], done.stdout[-2000:]
    assert glob.glob(str(tmp_path / "runs" / "*" / "checkpoint_step100.rank1.pt"))


ATARI = [
    "--env-ids", "Pong", "Breakout", "Boxing", "--critic-width", "32", "--encoder-width", "2", "--batch-size", "16",
    "--buffer-size", "500", "--learning-starts", "10", "--eval-interval", "40", "--eval-episodes", "1",
    "--log-interval", "20", "--max-episode-frames", "160", "--epsilon-decay-steps", "20", "--save-buffer",
    "--no-cuda", "--dist-timeout", "60",
]  # fmt: skip


def test_two_processes_of_bro_atari_resume_exactly(tmp_path):
    for name, steps in [("straight", "40"), ("half", "25")]:
        done = torchrun(tmp_path, *ATARI, "--total-timesteps", steps, "--exp-name", name, script="bro_atari.py")
        assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1: task 2 (Boxing), 5 samples" in done.stdout
    assert "Boxing" in done.stdout.split("eval @ 25:")[1]  # rank 1's game, gathered and printed by rank 0
    folder = run_folder(tmp_path, "half")
    resumed = torchrun(tmp_path, "--resume", folder, "--total-timesteps", "40", script="bro_atari.py")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for name in ["checkpoint.pt", "checkpoint_step40.rank1.pt"]:
        a = flatten(torch.load(os.path.join(run_folder(tmp_path, "straight"), name), weights_only=True))
        b = flatten(torch.load(os.path.join(folder, name), weights_only=True))
        differing = [k for k in a if "args" not in k and "run_name" not in k and not torch.equal(a[k], b[k])]
        assert not differing, f"{name}: the resumed run differs in {differing[:5]}"


# ---- Faults ----
def start_torchrun(tmp_path, *args: str) -> subprocess.Popen:
    """torchrun in a session of its own, as a terminal's foreground job: os.killpg(pid, SIGINT) is a Ctrl-C."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command += [os.path.join(REPO, "bro_mt.py"), "--env-ids", *TASKS, *FLAGS, *args]
    options = dict(cwd=tmp_path, env=os.environ | LOOPBACK, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.Popen(command, start_new_session=True, **options)


def worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the torchrun worker of `rank` (a child of the launcher with RANK=rank in its environment)."""
    deadline = time.time() + 60
    while time.time() < deadline:
        children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
        for pid in children:
            try:
                environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(pid)
        time.sleep(0.2)
    raise AssertionError(f"no worker of rank {rank} found")


def read_until(launcher: subprocess.Popen, marker: str, lines: list, timeout: float = 180):
    deadline = time.time() + timeout
    for line in launcher.stdout:
        lines.append(line)
        if line.startswith(marker):
            return
        assert time.time() < deadline, f"no line starting with {marker!r} within {timeout} s:\n{''.join(lines)}"
    raise AssertionError(f"the run ended before {marker!r}:\n{''.join(lines)}")


def finish(launcher: subprocess.Popen, lines: list, timeout: float = 120) -> int:
    try:
        out, _ = launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        launcher.kill()
        raise AssertionError(f"the run did not end within {timeout} s:\n{''.join(lines)}")
    lines.append(out)
    return launcher.returncode


@pytest.mark.parametrize("how", ["sigterm to rank 1", "ctrl-c"])
def test_a_signal_stops_both_processes_at_one_step_with_the_checkpoint_saved(tmp_path, how):
    """SIGTERM to rank 1 alone (as a scheduler might send), or a terminal's Ctrl-C (SIGINT to torchrun and both
    workers, which torchrun then forwards again): the processes agree to stop at the same step, both save their part
    of the checkpoint, and the run ends with the resume command. (With --bf16, which changes only the forward passes:
    the gradients stay float32 and are averaged as usual.)"""
    launcher, lines = start_torchrun(tmp_path, "--total-timesteps", "100000", "--buffer-size", "100000", "--bf16"), []
    read_until(launcher, "step 100/", lines)
    if how == "ctrl-c":
        os.killpg(launcher.pid, signal.SIGINT)
        finish(launcher, lines)  # torchrun itself exits with 1 after a Ctrl-C (its SignalException)
    else:
        os.kill(worker_pid(launcher, 1), signal.SIGTERM)
        assert finish(launcher, lines) == 0, "".join(lines)
    out = "".join(lines)
    stopped = [line for line in out.splitlines() if line.startswith("stopped at step")]
    assert stopped and "torchrun --standalone --nproc-per-node 2 bro_mt.py --resume" in stopped[0], out
    step = int(stopped[0].split()[3].rstrip(";").replace(",", ""))
    (folder,) = glob.glob(str(tmp_path / "runs" / "*"))
    ckpt = run_utils.load_checkpoint(folder, "bro_mt", bro_mt.CHECKPOINT_KEYS)
    assert ckpt["global_step"] == step and ckpt["world_size"] == 2
    shard = torch.load(os.path.join(folder, ckpt["shards"][0]["file"]), weights_only=True)
    assert shard["rank"] == 1 and shard["obs"].shape[0] == 1  # rank 1's one task, saved at the same step


def test_a_killed_process_ends_the_other_with_a_message_and_the_last_checkpoint_intact(tmp_path):
    launcher, lines = start_torchrun(tmp_path, "--total-timesteps", "100000", "--save-every", "100"), []
    read_until(launcher, "checkpoint saved at step 100", lines)
    started = time.time()
    os.kill(worker_pid(launcher, 1), signal.SIGKILL)
    assert finish(launcher, lines, timeout=90) != 0
    out = "".join(lines)
    assert time.time() - started < 90
    assert "rank 0: lost contact with the other processes of this run" in out, out[-3000:]
    assert "another process died without saying why (killed" in out  # SIGKILL leaves no reason
    (folder,) = glob.glob(str(tmp_path / "runs" / "*"))
    ckpt = run_utils.load_checkpoint(folder, "bro_mt", bro_mt.CHECKPOINT_KEYS)
    assert ckpt["global_step"] % 100 == 0 and ckpt["global_step"] >= 100
    shard = os.path.join(folder, ckpt["shards"][0]["file"])
    assert run_utils.load_checkpoint(shard, "bro_mt", {"rank"})["rank"] == 1


FAILING_SIMULATOR = """
import os, runpy, sys
sys.path.insert(0, {repo!r})
from brc_utils import envs

if os.environ["RANK"] == "1":  # rank 1's training simulator fails at step 129
    real_step, steps = envs.DMCEnv.step, []

    def step(self, action):
        steps.append(1)
        if len(steps) == 100 + 60 + 30:  # 100 training steps, one 60-step evaluation episode, 30 more steps
            raise RuntimeError("simulated physics failure")
        return real_step(self, action)

    envs.DMCEnv.step = step
sys.argv[0] = os.path.join({repo!r}, "bro_mt.py")
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_failing_process_names_itself_and_the_others_name_it_too(tmp_path):
    """A simulator error on rank 1: rank 1 saves its state for inspection and says why; rank 0 ends too, naming rank 1
    and its reason (left in the process group's store), with the last checkpoint."""
    script = tmp_path / "failing.py"
    script.write_text(FAILING_SIMULATOR.format(repo=REPO))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    command += ["--env-ids", *TASKS, *FLAGS, "--total-timesteps", "1000", "--save-every", "100"]
    env = os.environ | LOOPBACK
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "rank 1: an environment failed at step 129 (RuntimeError: simulated physics failure)" in out, out[-3000:]
    assert "env_error_step129.rank1.pt for inspection" in out
    assert "rank 0: lost contact with the other processes of this run" in out
    assert "rank 1 stopped: an environment failed at step 129" in out
    assert glob.glob(str(tmp_path / "runs" / "*" / "checkpoint_step100.rank1.pt"))
