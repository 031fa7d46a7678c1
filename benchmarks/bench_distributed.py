"""One process against several (torchrun, gloo on the CPU): environment steps per second once learning runs, and
where each step's time goes.

For each setting, the real training script runs twice with the same flags: `python bro_mt.py ...` and
`torchrun --standalone --nproc-per-node N bro_mt.py ...`, one torch thread per process. The steps/s are the mean of
the progress lines after the first update (the random-action phase and the first interval left out). Then, to say
where the time goes, the parts of a step are timed on their own: stepping the envs of all tasks (and of the largest
shard) in this process; one update at the global batch in this process; and, in N spawned gloo processes that all
update at once as in a run, one distributed update at each process's share of the batch and, of it, the three
gradient all-reduces. A step runs `--updates-per-step` (2) updates. "rest" is what the measured step time leaves:
replay sampling, acting, the per-step agreements, and waiting for the slowest process.

    python benchmarks/bench_distributed.py                  # DMC_EASY, MT10 and MT50, 1 vs 2 processes (~15 min)
    python benchmarks/bench_distributed.py --settings dmc --steps 800

Run it on an idle machine: two processes need two free cores. It prints a markdown table for RESULTS.md.
"""

import argparse
import contextlib
import datetime
import io
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

import bro_mt  # noqa: E402
from brc_utils import distributed  # noqa: E402
from brc_utils.envs import make_task_envs, resolve_env_ids  # noqa: E402

UPDATES = bro_mt.Args().updates_per_step  # updates per environment step (the paper's replay ratio, 2)
SETTINGS = {  # name: (suite, critic width, global batch)
    "dmc": ("DMC_EASY", 128, 256),
    "mt10": ("MW_MT10", 128, 256),
    "mt50": ("MW_MT50", 128, 256),
    "mt50-gpu": ("MW_MT50", 4096, 1024),  # the paper's 64M critic: for --cuda on a multi-GPU machine
}


def training_rate(flags: list, processes: int, steps: int, learning_starts: int, log_interval: int) -> float:
    """Steps/s of a real run after its first update: the mean of the progress lines that follow the first one with
    losses."""
    run = ["--total-timesteps", str(steps), "--learning-starts", str(learning_starts), "--log-interval"]
    run += [str(log_interval), "--eval-interval", str(10 * steps), "--save-minutes", "0"]
    script = os.path.join(REPO, "bro_mt.py")
    launcher = [sys.executable] if processes == 1 else [sys.executable, "-m", "torch.distributed.run"]
    launcher += [] if processes == 1 else ["--standalone", f"--nproc-per-node={processes}"]
    with tempfile.TemporaryDirectory() as folder:
        done = subprocess.run([*launcher, script, *flags, *run], cwd=folder, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    rates = []
    for line in done.stdout.splitlines():
        match = re.match(r"step ([\d,]+)/[\d,]+ \| ([\d,.]+) (steps/s|s/step)", line)
        if match and "critic" in line:
            value = float(match.group(2).replace(",", ""))
            rates.append(value if match.group(3) == "steps/s" else 1 / value)
    if len(rates) < 2:
        raise SystemExit(f"too few progress lines after the first update:\n{done.stdout[-2000:]}")
    return float(np.mean(rates[1:]))


def env_seconds(env_ids: list, seconds: float = 3.0) -> float:
    """Seconds per step of the envs of `env_ids` alone, stepped together with random actions, in this process."""
    envs = make_task_envs(env_ids, 1, 1000, (39, 6), "fixed", async_envs=False)
    envs.reset(seed=1)
    rng, steps, start = np.random.default_rng(0), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.uniform(-1, 1, (len(env_ids), 6)).astype(np.float32))
        steps += 1
    envs.close()
    return (time.perf_counter() - start) / steps


def _batch(batch: int, first_task: int, tasks: int) -> bro_mt.Batch:
    """Random transitions of MT-sized inputs (observation 39, action 6) of tasks [first_task, first_task + tasks)."""
    task_ids = first_task + torch.randint(tasks, (batch,))
    obs, next_obs, actions = torch.randn(batch, 39), torch.randn(batch, 39), torch.rand(batch, 6) * 2 - 1
    return bro_mt.Batch(obs, actions, torch.randn(batch), next_obs, torch.zeros(batch), task_ids)


def _updates(num_tasks: int, width: int, batch: bro_mt.Batch, seconds: float = 3.0) -> tuple:
    """(seconds per bro_mt.update on `batch`, the networks), eager, in this process (distributed or not)."""
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # make_nets announces itself
        nets = bro_mt.make_nets(bro_mt.Args(critic_width=width), "embedding", 39, 6, num_tasks, width, "cpu")
    masks, target_entropy = bro_mt.action_masks_and_target_entropy([6] * num_tasks, 6, "cpu")
    support, scales = torch.linspace(-10, 10, 101), torch.ones(num_tasks)
    for _ in range(3):
        bro_mt.update(batch, nets, masks, target_entropy, scales, support, 0.99, 0.005)
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or updates < 10:
        bro_mt.update(batch, nets, masks, target_entropy, scales, support, 0.99, 0.005)
        updates += 1
    return (time.perf_counter() - start) / updates, nets


def _distributed_worker(rank: int, world: int, port: int, num_tasks: int, width: int, batch: int, result: str):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)})
    os.environ["WORLD_SIZE"] = str(world)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    shard = distributed.shard_tasks(num_tasks, batch, 1)
    update, nets = _updates(num_tasks, width, _batch(shard.batch_size, shard.first, shard.size))
    optimizers = [nets.critic_optimizer, nets.actor_optimizer, nets.alpha_optimizer]
    times = []
    for _ in range(50):
        torch.distributed.barrier()
        start = time.perf_counter()
        for optimizer in optimizers:
            distributed.average_gradients(optimizer)
        times.append(time.perf_counter() - start)
    if rank == 0:
        torch.save((update, float(np.median(times[5:]))), result)
    torch.distributed.destroy_process_group()


def distributed_update_seconds(world: int, num_tasks: int, width: int, batch: int) -> tuple:
    """(seconds of one distributed update, seconds of its three gradient all-reduces alone), measured in `world` gloo
    processes that all update at once, each on its share of `batch`, as in a run."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        result = os.path.join(folder, "seconds.pt")
        arguments = (world, port, num_tasks, width, batch, result)
        mp.start_processes(_distributed_worker, args=arguments, nprocs=world, start_method="spawn")
        return torch.load(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["dmc", "mt10", "mt50"], choices=list(SETTINGS))
    parser.add_argument("--processes", type=int, default=2, help="the distributed run's process count")
    parser.add_argument("--steps", type=int, default=1500, help="steps of each run (learning from --learning-starts)")
    parser.add_argument("--learning-starts", type=int, default=500)
    parser.add_argument("--log-interval", type=int, default=100)
    parser.add_argument(
        "--cuda", action="store_true", help="on GPUs (NCCL, one GPU per process): only the two runs' steps/s"
    )
    options = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, load {load:.2f} at the start, one thread per process\n")
    n, k = options.processes, UPDATES
    print(
        f"| setting | 1 process | {n} processes | speed-up | per step, 1 process: envs + {k} updates | per step, each "
        f"of {n}: envs + {k} updates (of which all-reduce) | rest, {n} processes |"
    )
    print("|---|---|---|---|---|---|---|")
    ms = lambda seconds: f"{1000 * seconds:.1f}"  # noqa: E731
    for name in options.settings:
        suite, width, batch = SETTINGS[name]
        label = f"{suite}, width {width}, batch {batch}"
        flags = ["--env-ids", suite, "--critic-width", str(width), "--batch-size", str(batch)]
        flags += [] if options.cuda else ["--no-cuda", "--threads", "1"]
        env_ids = resolve_env_ids([suite])
        tasks = len(env_ids)
        timing = (options.steps, options.learning_starts, options.log_interval)
        one, many = training_rate(flags, 1, *timing), training_rate(flags, n, *timing)
        if options.cuda:
            print(f"| {label} (CUDA) | {one:.1f} steps/s | {many:.1f} steps/s | {many / one:.2f}x | | | |", flush=True)
            continue
        share = -(-tasks // n)  # the largest shard's tasks
        env_all, env_share = env_seconds(env_ids), env_seconds(env_ids[:share])
        update_all = _updates(tasks, width, _batch(batch, 0, tasks))[0]
        update_many, reduce = distributed_update_seconds(n, tasks, width, batch)
        rest = 1 / many - env_share - k * update_many
        print(
            f"| {label} | {one:.1f} steps/s | {many:.1f} steps/s | {many / one:.2f}x | {ms(env_all)} + {k} x "
            f"{ms(update_all)} ms | {ms(env_share)} + {k} x {ms(update_many)} ({ms(reduce)}) ms | {ms(rest)} ms |",
            flush=True,
        )
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
