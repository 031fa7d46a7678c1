"""Speed of bro_mt.py: updates/s, TFLOP/s, full-loop environment steps/s and peak memory per preset and fast path.

    python benchmarks/bench_mt.py --presets 1M --threads 1                 # CPU: eager, compile, bf16
    python benchmarks/bench_mt.py --presets 1M 4M 16M 64M 256M --loop      # a GPU: all four modes
    python benchmarks/bench_mt.py --widths 256 --batch-size 256 --threads 2 --modes eager compile
    python benchmarks/bench_mt.py --presets --widths 64 128 256 512 --batch-sizes 128 256 1024 --obs-dim 5 \
        --action-dim 2 --num-tasks 2 --threads 1 --modes eager compile --markdown      # small critics on a CPU core

Modes: eager (the reference), compile (--compile), cudagraphs (--compile --cudagraphs), bf16 (--compile --cudagraphs
--bf16 on CUDA; --compile --bf16 on a CPU). Every cell runs in a fresh process, so that compile caches and peak
memory do not leak between rows.

updates/s times `bro_mt.update`, through the same `run_utils.fast_update` wrapper as the training loop, on random
data of dog-sized inputs (observation 223, action 38, 7 tasks, batch 1024 unless stated). FLOPs of one update
come from the layer shapes (`update_flops`, checked against torch's FLOP counter at start-up). With --loop, the
real training loop (bro_mt.main on DMC_HARD with the mode's flags) is timed over --loop-steps steps after
learning starts and warm-up; that is the rate a run would see (1M-transition replay aside: the benchmark keeps a
small one). On a CPU, "% matmul" compares the update's FLOP/s with a large float32 matmul's on the same threads
(the most those threads reach). --markdown prints the table as markdown, to paste into benchmarks/RESULTS.md.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the scripts set it, before torch loads OpenMP

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bro_mt  # noqa: E402
from brc_utils import envs as brc_envs  # noqa: E402
from brc_utils import run as run_utils  # noqa: E402

MODES = {
    "eager": {},
    "compile": {"compile": True},
    "cudagraphs": {"compile": True, "cudagraphs": True},
    "bf16": {"compile": True, "cudagraphs": True, "bf16": True},
}


def mode_flags(mode: str, device: torch.device) -> dict:
    flags = dict(MODES[mode])
    if device.type != "cuda" and mode == "bf16":
        flags.pop("cudagraphs")
    return flags


def update_flops(obs_dim, action_dim, num_tasks, width, batch_size, num_bins=101, embedding_dim=32) -> int:
    """Matmul FLOPs of one update (2 per multiply-add), from the layer shapes.

    F_critic: one forward of the critic ensemble; F_actor: one of the actor. The update runs
    target: actor(s') + target critic(s', a')                            F_actor + F_critic
    critic: forward, backward for weights and inputs (the embedding)     3 F_critic (less the first layer's input
            gradient in single-task mode, which has no embedding to train)
    actor:  actor forward, critic forward, critic backward for the action only (no weight gradients),
            actor backward (weights; no input gradient of its first layer) 2 F_actor - first layer + 2 F_critic
    """
    critic_in = obs_dim + action_dim + (embedding_dim if num_tasks > 1 else 0)
    actor_in = obs_dim + (embedding_dim if num_tasks > 1 else 0)
    per_sample = critic_in * width + 2 * bro_mt.CRITIC_DEPTH * width * width + width * num_bins
    f_critic = 2 * bro_mt.ENSEMBLE_SIZE * batch_size * per_sample
    a = bro_mt.ACTOR_WIDTH
    f_actor = 2 * batch_size * (actor_in * a + 2 * bro_mt.ACTOR_DEPTH * a * a + 2 * a * action_dim)
    no_embedding = 2 * bro_mt.ENSEMBLE_SIZE * batch_size * critic_in * width if num_tasks == 1 else 0
    return 6 * f_critic - no_embedding + 4 * f_actor - 2 * batch_size * actor_in * a


def make_update(width, batch_size, obs_dim, action_dim, num_tasks, device, flags):
    critic = bro_mt.Critic(obs_dim, action_dim, num_tasks, width, bf16=flags.get("bf16", False)).to(device)
    target = bro_mt.Critic(obs_dim, action_dim, num_tasks, width).to(device)
    target.load_state_dict(critic.state_dict())
    target.requires_grad_(False)
    actor = bro_mt.Actor(obs_dim, action_dim, critic.embedding_dim).to(device)
    log_alpha = torch.tensor(math.log(0.1), device=device, requires_grad=True)
    optimizers = bro_mt.make_optimizers(critic, actor, log_alpha, 3e-4, 1e-4, 3e-4, flags.get("cudagraphs", False))
    nets = bro_mt.Nets(critic, target, actor, log_alpha, *optimizers)
    masks = torch.ones(num_tasks, action_dim, device=device)
    entropy = torch.full((num_tasks,), -action_dim / 2, device=device)
    support, g_bar = torch.linspace(-10, 10, 101, device=device), torch.full((num_tasks,), 100.0, device=device)
    scales = bro_mt.reward_scale(g_bar, 0.1, entropy, 0.99)  # the training loop computes them once per env step

    def update_step(batch):
        return bro_mt.update(batch, nets, masks, entropy, scales, support, 0.99, 0.005)

    batch = bro_mt.Batch(
        torch.randn(batch_size, obs_dim, device=device),
        torch.rand(batch_size, action_dim, device=device) * 2 - 1,
        torch.rand(batch_size, device=device),
        torch.randn(batch_size, obs_dim, device=device),
        torch.zeros(batch_size, device=device),
        torch.randint(num_tasks, (batch_size,), device=device),
    )
    return run_utils.fast_update(update_step, flags.get("compile", False), flags.get("cudagraphs", False)), batch


def matmul_gflops(size: int = 1024, seconds: float = 3.0) -> float:
    """GFLOP/s of a large float32 matmul on torch's current threads: about the most those cores reach."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


class Table:
    """Rows printed as they come: aligned text, or markdown (--markdown) to paste into RESULTS.md."""

    def __init__(self, header: list, markdown: bool):
        self.markdown = markdown
        if markdown:
            print("| " + " | ".join(header) + " |\n|" + "---|" * len(header), flush=True)
        else:
            self.row(header)

    def row(self, cells: list):
        cells = [str(c) for c in cells]
        print(("| " + " | ".join(cells) + " |") if self.markdown else " ".join(f"{c:>10}" for c in cells), flush=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_updates(args, width, device, flags) -> dict:
    step, batch = make_update(width, args.batch_size, args.obs_dim, args.action_dim, args.num_tasks, device, flags)
    start = time.perf_counter()
    for _ in range(5):  # warm-up: compilation, CUDA graph recording, allocator
        step(batch)
    sync(device)
    warmup = time.perf_counter() - start
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds or count < 3:
        step(batch)
        count += 1
    sync(device)
    return {"updates_per_s": count / (time.perf_counter() - start), "warmup_s": warmup}


def time_loop(args, width, device, flags) -> float:
    """Environment steps/s of bro_mt.main itself, after learning starts and warm-up (from its charts/SPS)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    n = args.loop_steps
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            bro_mt.main(
                bro_mt.Args(
                    env_ids=args.env_ids,
                    critic_width=width,
                    batch_size=args.batch_size,
                    learning_starts=n,
                    total_timesteps=3 * n,
                    log_interval=n,
                    eval_interval=10**9,
                    eval_episodes=1,
                    max_episode_steps=100,
                    buffer_size=3 * n,
                    cuda=device.type == "cuda",
                    async_envs=args.async_envs,
                    threads=args.threads,  # None: the script's automatic choice
                    **flags,
                )
            )
            events = EventAccumulator(os.path.join(tmp, "runs", os.listdir(os.path.join(tmp, "runs"))[0]))
            events.Reload()
            return events.Scalars("charts/SPS")[-1].value  # steps 2n..3n: learning, compiled and warm
        finally:
            os.chdir(cwd)


def time_envs(env_ids, async_envs: bool, seconds: float) -> float:
    """Environment steps/s (one step = every task once) of the training loop's vector env, random actions."""
    import gymnasium as gym
    import numpy as np

    env_ids = brc_envs.resolve_env_ids(env_ids)
    sizes = [(e.obs_size, e.action_size) for e in (brc_envs.make_env(i, 0) for i in env_ids)]
    pad = (max(o for o, _ in sizes), max(a for _, a in sizes))
    fns = [lambda i=i, env_id=env_id: brc_envs.make_env(env_id, i, None, pad) for i, env_id in enumerate(env_ids)]
    vector_env = gym.vector.AsyncVectorEnv if async_envs else gym.vector.SyncVectorEnv
    envs = vector_env(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset()
    rng, count, start = np.random.default_rng(0), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.uniform(-1, 1, (len(env_ids), pad[1])).astype(np.float32))
        count += 1
    envs.close()
    return count / (time.perf_counter() - start)


def one_cell(args):
    """Runs in a fresh process: one preset/width in one mode; prints one JSON line."""
    device = torch.device(args.device)
    flags = mode_flags(args.mode, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        if flags.get("bf16"):
            torch.backends.cuda.matmul.allow_tf32 = True
    result = time_updates(args, args.width, device, flags)
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        import resource

        result["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process peak RSS
    if args.loop:
        result["loop_steps_per_s"] = time_loop(args, args.width, device, flags)
    print("RESULT " + json.dumps(result), flush=True)


def check_flop_formula():
    """The shape-derived count equals torch's FLOP counter on a small update (multi-task and single-task)."""
    from torch.utils.flop_counter import FlopCounterMode

    for num_tasks in (3, 1):
        step, batch = make_update(64, 16, 11, 3, num_tasks, torch.device("cpu"), {})
        with FlopCounterMode(display=False) as counter:
            step(batch)
        expected = update_flops(11, 3, num_tasks, 64, 16)
        assert counter.get_total_flops() == expected, (counter.get_total_flops(), expected)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="*", default=["1M"], choices=list(bro_mt.MODEL_SIZES))
    parser.add_argument("--widths", nargs="*", type=int, default=[], help="extra critic widths to time")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="several batch sizes (instead of --batch-size)")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument("--obs-dim", type=int, default=223, help="padded observation size (dog: 223)")
    parser.add_argument("--action-dim", type=int, default=38, help="padded action size (dog: 38)")
    parser.add_argument("--num-tasks", type=int, default=7)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's; --loop: the script's automatic)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent on each update measurement")
    parser.add_argument("--loop", action="store_true", help="also time the real training loop (bro_mt.main)")
    parser.add_argument("--loop-steps", type=int, default=50, help="--loop: steps per phase (3 phases)")
    parser.add_argument("--env-ids", nargs="+", default=["DMC_HARD"], help="--loop: the tasks")
    parser.add_argument("--async-envs", action="store_true", help="--loop: with --async-envs")
    parser.add_argument("--envs", action="store_true", help="time the environments alone: serial vs --async-envs")
    parser.add_argument("--mode", help=argparse.SUPPRESS)  # internal: one cell, in a child process
    parser.add_argument("--width", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    if args.mode:
        one_cell(args)
        sys.exit()

    device = torch.device(args.device)
    check_flop_formula()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    batch_sizes = args.batch_sizes or [args.batch_size]
    print(
        f"torch {torch.__version__}, {name}; batch {' / '.join(map(str, batch_sizes))}, obs {args.obs_dim}, action "
        f"{args.action_dim}, {args.num_tasks} tasks; FLOP formula checked against torch's counter"
    )
    matmul = matmul_gflops() if device.type == "cpu" else None
    if matmul:
        print(f"a 1024x1024x1024 float32 matmul on these {torch.get_num_threads()} thread(s): {matmul:.1f} GFLOP/s")
    if args.envs:
        serial, workers = (time_envs(args.env_ids, a, args.seconds) for a in (False, True))
        print(
            f"environments {' '.join(args.env_ids)} on {os.cpu_count()} cores: serial {serial:.1f} steps/s, "
            f"--async-envs {workers:.1f} steps/s ({workers / serial:.2f}x)"
        )
    header = ["preset", "width", "batch", "mode", "GFLOP/upd", "updates/s", "TFLOP/s", "% matmul", "loop steps/s"]
    header += ["peak GiB", "warm-up s"]
    table = Table(header, args.markdown)
    cells = [(p, bro_mt.MODEL_SIZES[p]) for p in args.presets] + [("custom", w) for w in args.widths]
    for (preset, width), batch_size in [(cell, b) for cell in cells for b in batch_sizes]:
        flops = update_flops(args.obs_dim, args.action_dim, args.num_tasks, width, batch_size)
        for mode in args.modes:
            row = [preset, width, batch_size, mode, f"{flops / 1e9:.2f}"]
            if MODES[mode].get("cudagraphs") and device.type != "cuda" and mode != "bf16":
                table.row(row + ["n/a: CUDA graphs need a CUDA GPU"])
                continue
            child = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--width", str(width)]
            child += sys.argv[1:] + ["--batch-size", str(batch_size), "--batch-sizes", str(batch_size)]
            out = subprocess.run(child, capture_output=True, text=True)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                table.row(row + ["failed: " + (out.stderr.strip().splitlines() or ["no output"])[-1]])
                continue
            r = json.loads(line[len("RESULT ") :])
            achieved = flops * r["updates_per_s"] / 1e9  # GFLOP/s
            share = f"{100 * achieved / matmul:.0f}%" if matmul else "-"
            loop = f"{r['loop_steps_per_s']:.2f}" if "loop_steps_per_s" in r else "-"
            table.row(
                row
                + [f"{r['updates_per_s']:.2f}", f"{achieved / 1e3:.3f}", share, loop, f"{r['peak_gib']:.2f}"]
                + [f"{r['warmup_s']:.1f}"]
            )
    if device.type != "cuda":
        print("CPU: bf16 = --compile --bf16; peak GiB = the process's peak resident memory")
