"""One process against several (torchrun, gloo on the CPU): environment steps per second once learning runs, and
where each step's time goes.

For each setting, the real training script runs twice with the same flags: `python bro_mt.py ...` and
`torchrun --standalone --nproc-per-node N bro_mt.py ...`, one torch thread per process. The steps/s are the mean of
the progress lines after the first update (compilation, warm-up and the random-action phase left out). Then, to say
where the time goes, the parts of a step are timed alone in this process: stepping the envs of all tasks and of one
process's share, one update at the global batch and at one process's share of it, and (in N spawned gloo processes)
the three gradient all-reduces of one update.

    python benchmarks/bench_distributed.py                       # DMC_EASY and MT10, 1 vs 2 processes (~10 min)
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

SETTINGS = {  # name: (suite, critic width, global batch)
    "dmc": ("DMC_EASY", 128, 256),
    "mt10": ("MW_MT10", 128, 256),
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


def update_seconds(num_tasks: int, width: int, batch: int, seconds: float = 3.0) -> float:
    """Seconds per bro_mt update (one process, eager) at `batch`, on random transitions of MT-sized inputs."""
    torch.manual_seed(0)
    obs_dim, action_dim = 39, 6
    args = bro_mt.Args(critic_width=width)
    with contextlib.redirect_stdout(io.StringIO()):  # make_nets announces itself
        nets = bro_mt.make_nets(args, "embedding", obs_dim, action_dim, num_tasks, width, "cpu")
    masks, target_entropy = bro_mt.action_masks_and_target_entropy([action_dim] * num_tasks, action_dim, "cpu")
    support, scales = torch.linspace(-10, 10, 101), torch.ones(num_tasks)
    batch_data = bro_mt.Batch(
        torch.randn(batch, obs_dim), torch.rand(batch, action_dim) * 2 - 1, torch.randn(batch),
        torch.randn(batch, obs_dim), torch.zeros(batch), torch.randint(num_tasks, (batch,)),
    )  # fmt: skip
    for _ in range(3):
        bro_mt.update(batch_data, nets, masks, target_entropy, scales, support, 0.99, 0.005)
    updates, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        bro_mt.update(batch_data, nets, masks, target_entropy, scales, support, 0.99, 0.005)
        updates += 1
    return (time.perf_counter() - start) / updates


def _all_reduce_worker(rank: int, world: int, port: int, num_tasks: int, width: int, result: str):
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank)})
    os.environ["WORLD_SIZE"] = str(world)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=120))
    distributed.shard_tasks(num_tasks, 256, 1)
    args = bro_mt.Args(critic_width=width)
    with contextlib.redirect_stdout(io.StringIO()):
        nets = bro_mt.make_nets(args, "embedding", 39, 6, num_tasks, width, "cpu")
    optimizers = [nets.critic_optimizer, nets.actor_optimizer, nets.alpha_optimizer]
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = torch.randn_like(p)
    times = []
    for _ in range(50):
        torch.distributed.barrier()
        start = time.perf_counter()
        for optimizer in optimizers:
            distributed.average_gradients(optimizer)
        times.append(time.perf_counter() - start)
    if rank == 0:
        torch.save(float(np.median(times[5:])), result)
    torch.distributed.destroy_process_group()


def all_reduce_seconds(world: int, num_tasks: int, width: int) -> float:
    """Median seconds of one update's three gradient all-reduces (critic, actor, temperature) over `world` gloo
    processes on this machine."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        result = os.path.join(folder, "seconds.pt")
        mp.start_processes(
            _all_reduce_worker, args=(world, port, num_tasks, width, result), nprocs=world, start_method="spawn"
        )
        return torch.load(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["dmc", "mt10"], choices=list(SETTINGS))
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
    n = options.processes
    print(
        f"| setting | 1 process | {n} processes | speed-up | per step, 1 process: envs + update | per step, each of {n}: envs + update + all-reduce |"
    )
    print("|---|---|---|---|---|---|")
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
            print(f"| {label} (CUDA) | {one:.1f} steps/s | {many:.1f} steps/s | {many / one:.2f}x | | |", flush=True)
            continue
        share = -(-tasks // n)  # the largest shard's tasks
        env_all, env_share = env_seconds(env_ids), env_seconds(env_ids[:share])
        update_all = update_seconds(tasks, width, batch)
        update_share = update_seconds(tasks, width, round(batch * share / tasks))
        reduce = all_reduce_seconds(n, tasks, width)
        ms = lambda seconds: f"{1000 * seconds:.1f}"  # noqa: E731
        print(
            f"| {label} | {one:.1f} steps/s | {many:.1f} steps/s | {many / one:.2f}x | {ms(env_all)} + "
            f"{ms(update_all)} ms | {ms(env_share)} + {ms(update_share)} + {ms(reduce)} ms |",
            flush=True,
        )
    print(f"\nload {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
