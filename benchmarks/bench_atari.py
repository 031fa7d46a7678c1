"""Speed of bro_atari.py: emulator steps/s of a game set, then for every head preset and mode the gradient updates/s,
the loop's environment steps/s (serial and --async-envs), peak GPU memory, and FLOP/s.

    python benchmarks/bench_atari.py                                  # ATARI_QUICK, presets 1M 4M, batch 32 on CPU
    python benchmarks/bench_atari.py --presets 1M --threads 1 --modes eager compile
    python benchmarks/bench_atari.py --presets 16M 64M 256M --device cuda --env-ids ATARI_5

Modes: eager = bro_atari.update as written; compile = --compile; compile+cudagraphs = --compile --cudagraphs (CUDA
only); bf16 = --compile --cudagraphs --bf16 on CUDA, --compile --bf16 on a CPU. A mode that cannot run on the device
prints "n/a" and why. Every mode times the training loop's own update_step (run_utils.fast_update of bro_atari.update:
critic cross-entropy -> AdamW -> Polyak) on a random batch of uint8 frame stacks; replay sampling is excluded.
"first s" is the first call (torch.compile compiles then).

Emulation steps every game of --env-ids once per step with random actions through brc_atari.GameEnv (4 emulator
frames per step, max-pool and 84x84 resize included). The loop columns are measured, not derived: random actions, the
vector env's step and --updates-per-step updates per step, with one host sync per step as the training loop's NaN
check does. "serial" is the default loop, ~1 / (t_env + k t_update); "async" steps the games in worker processes
during the updates (--async-envs), ~1 / max(t_env, k t_update) given spare cores. Acting, storing and sampling are
left out of both.

FLOPs of one update come from the layer shapes (update_flops below); the script checks the formula against torch's
FlopCounterMode before timing. TFLOP/s = FLOPs per update x updates/s.
"""

import argparse
import os
import sys
import time
from functools import partial

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the scripts set it, before torch loads OpenMP

import gymnasium as gym  # noqa: E402
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bro_atari  # noqa: E402
from brc_utils import atari as brc_atari  # noqa: E402
from brc_utils import run as run_utils  # noqa: E402

MODES = ["eager", "compile", "compile+cudagraphs", "bf16"]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def update_flops(batch_size, num_games, num_actions, width, encoder_width=16, num_bins=101, embedding_dim=32) -> int:
    """FLOPs (2 per multiply-add) of one bro_atari.update, counting convolutions and matmuls only.

    Per sample, a 3x3 convolution C_in -> C_out with an H x W output costs 2 * 9 * C_in * C_out * H * W and a linear
    layer in -> out costs 2 * in * out. The encoder's three stages convolve at 84, 42 and 21 pixels, max-pool to 42,
    21 and 11, and run two residual blocks (two convolutions each) there. An update runs the network forward three
    times (online and target on s', online on s) and back-propagates the last, which costs two forwards (the
    gradients of the inputs and of the weights) less the first convolution's gradient of the pixels: B (5 F - F_conv1).
    """
    w = encoder_width
    conv = lambda c_in, c_out, size: 2 * 9 * c_in * c_out * size * size  # noqa: E731
    stages = [(bro_atari.FRAME_STACK, w, 84, 42), (w, 2 * w, 42, 21), (2 * w, 2 * w, 21, 11)]  # in, out, size, pooled
    encoder = sum(conv(c_in, c_out, size) + 4 * conv(c_out, c_out, pooled) for c_in, c_out, size, pooled in stages)
    features = 2 * w * 11 * 11 + (embedding_dim if num_games > 1 else 0)
    # BroNet head: input layer, CRITIC_DEPTH blocks of two W x W layers, and the output layer (actions x bins)
    head = 2 * (features * width + 2 * bro_atari.CRITIC_DEPTH * width * width + width * num_actions * num_bins)
    return batch_size * (5 * (encoder + head) - conv(bro_atari.FRAME_STACK, w, 84))


def make_learner(num_games, width, encoder_width, batch_size, device, bf16=False, capturable=False):
    """Online and target network, AdamW and a random batch, as the training loop builds them (18 actions)."""
    net_args = (num_games, 18, width, encoder_width, 101, 32, bf16)
    q_network, target_network = bro_atari.QNetwork(*net_args).to(device), bro_atari.QNetwork(*net_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    target_network.requires_grad_(False)
    optimizer = torch.optim.AdamW(q_network.parameters(), 3e-4, weight_decay=1e-4, fused=True, capturable=capturable)

    def stacks():
        return torch.randint(0, 256, (batch_size, 4, 84, 84), dtype=torch.uint8, device=device)

    batch = bro_atari.Batch(
        stacks(),
        torch.randint(18, (batch_size,), device=device),
        torch.randn(batch_size, device=device),
        torch.full((batch_size,), 0.99**3, device=device),
        stacks(),
        torch.randint(num_games, (batch_size,), device=device),
    )
    support = torch.linspace(-10, 10, 101, device=device)

    def update(batch):  # the training loop's update_step
        return bro_atari.update(batch, q_network, target_network, optimizer, support, 0.005)

    return update, batch


def counted_update_flops(batch_size, num_games, num_actions, width, encoder_width, device) -> int:
    """FLOPs of one eager update as torch.utils.flop_counter.FlopCounterMode counts them (the check of update_flops)."""
    net_args = (num_games, num_actions, width, encoder_width)
    q_network, target_network = bro_atari.QNetwork(*net_args).to(device), bro_atari.QNetwork(*net_args).to(device)
    target_network.requires_grad_(False)
    optimizer = torch.optim.AdamW(q_network.parameters(), 3e-4)
    frames = torch.zeros(batch_size, 4, 84, 84, dtype=torch.uint8, device=device)
    ids = torch.zeros(batch_size, dtype=torch.long, device=device)
    batch = bro_atari.Batch(frames, ids, ids.float(), ids.float(), frames, ids)
    support = torch.linspace(-10, 10, 101, device=device)
    with FlopCounterMode(display=False) as counter:
        bro_atari.update(batch, q_network, target_network, optimizer, support, 0.005)
    return counter.get_total_flops()


def mode_flags(mode, device):
    """(compile, cudagraphs, bf16) of a mode on this device, or the reason it cannot run here."""
    cuda = device.type == "cuda"
    flags = {
        "eager": (False, False, False),
        "compile": (True, False, False),
        "compile+cudagraphs": (True, True, False),
        "bf16": (True, cuda, True),
    }[mode]
    if flags[1] and not cuda:
        return "needs CUDA"
    return flags


def time_updates(update_step, batch, device, seconds):
    """(first call s, updates/s); the first call compiles (torch.compile) and a few more warm up and record."""
    start = time.perf_counter()
    update_step(batch)
    sync(device)
    first = time.perf_counter() - start
    for _ in range(5):  # CUDAGraphUpdate: three warm-up updates, then the recording
        update_step(batch)
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        update_step(batch)
        count += 1
    sync(device)
    return first, count / (time.perf_counter() - start)


def time_loop(envs, update_step, batch, updates_per_step, device, seconds, async_envs):
    """Environment steps/s of: random actions -> step every game -> `updates_per_step` updates (during the step with
    --async-envs) -> one host sync, as the training loop's NaN check."""
    rng, num_actions = np.random.default_rng(0), envs.single_action_space.n
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        actions = rng.integers(num_actions, size=envs.num_envs)
        if async_envs:
            envs.step_async(actions)
        else:
            envs.step(actions)
        for _ in range(updates_per_step):
            metrics = update_step(batch)
        if async_envs:
            envs.step_wait()
        bool(torch.isfinite(metrics).all())
        count += 1
    return count / (time.perf_counter() - start)


def make_envs(games, async_envs):
    def make_env(game, seed):
        return brc_atari.AtariGame(game, seed, full_action_space=len(games) > 1)

    env_fns = [partial(brc_atari.GameEnv, make_env, game, i) for i, game in enumerate(games)]
    vector_env = gym.vector.AsyncVectorEnv if async_envs else gym.vector.SyncVectorEnv
    envs = vector_env(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset()
    return envs


def time_emulation(envs, seconds):
    rng, count, start = np.random.default_rng(0), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        envs.step(rng.integers(envs.single_action_space.n, size=envs.num_envs))
        count += 1
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["1M", "4M"], choices=list(bro_atari.MODEL_SIZES))
    parser.add_argument("--widths", nargs="*", type=int, default=[], help="extra head widths to time")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--encoder-width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 on CUDA, 32 on CPU (quick)")
    parser.add_argument("--env-ids", nargs="+", default=["ATARI_QUICK"])
    parser.add_argument("--updates-per-step", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent on each measurement")
    args = parser.parse_args()
    device = torch.device(args.device)
    args.batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {device}"
        + (
            f" ({torch.cuda.get_device_name(device)})"
            if device.type == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
    )
    games = brc_atari.resolve_env_ids(args.env_ids)
    serial_envs, async_envs = make_envs(games, False), make_envs(games, True)
    steps_per_s = time_emulation(serial_envs, args.seconds)
    print(
        f"emulation ({len(games)} games: {', '.join(games)}): {steps_per_s:.1f} steps/s = "
        f"{steps_per_s * len(games) * brc_atari.FRAME_SKIP:.0f} frames/s"
    )
    sizes = [(p, bro_atari.MODEL_SIZES[p]) for p in args.presets] + [("custom", w) for w in args.widths]
    formula = update_flops(2, len(games), 18, sizes[0][1], args.encoder_width)
    counted = counted_update_flops(2, len(games), 18, sizes[0][1], args.encoder_width, device)
    print(
        f"FLOPs of an update at batch 2, head width {sizes[0][1]}: formula {formula:,}, FlopCounterMode {counted:,} "
        f"({'equal' if formula == counted else 'DIFFERENT: fix update_flops'})"
    )
    print(
        f"batch {args.batch_size}, encoder width {args.encoder_width}, {args.updates_per_step} update(s) per step; "
        "peak GiB: torch.cuda.max_memory_allocated (CUDA only)"
    )
    print(
        f"{'preset':>7} {'width':>6} {'parameters':>12} {'mode':>18} {'first s':>8} {'updates/s':>10} "
        f"{'serial st/s':>11} {'async st/s':>10} {'peak GiB':>8} {'GFLOP/upd':>9} {'TFLOP/s':>8}"
    )
    for name, width in sizes:
        parameters = bro_atari.model_parameter_counts(len(games), 18, width, args.encoder_width)["total"]
        flops = update_flops(args.batch_size, len(games), 18, width, args.encoder_width)
        for mode in args.modes:
            row = f"{name:>7} {width:>6} {parameters:>12,} {mode:>18}"
            flags = mode_flags(mode, device)
            if isinstance(flags, str):
                print(f"{row} n/a ({flags})", flush=True)
                continue
            compile, cudagraphs, bf16 = flags
            torch._dynamo.reset()  # each mode compiles its own update
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                torch.backends.cuda.matmul.allow_tf32 = bf16  # as bro_atari.main: TF32 comes with --bf16
            update, batch = make_learner(
                len(games), width, args.encoder_width, args.batch_size, device, bf16, capturable=cudagraphs
            )
            update_step = run_utils.fast_update(update, compile, cudagraphs)
            try:
                first, ups = time_updates(update_step, batch, device, args.seconds)
            except Exception as error:  # e.g. no C++ compiler for torch.compile
                print(f"{row} n/a ({type(error).__name__}: {str(error).splitlines()[0][:80]})", flush=True)
                continue
            serial = time_loop(serial_envs, update_step, batch, args.updates_per_step, device, args.seconds, False)
            overlapped = time_loop(async_envs, update_step, batch, args.updates_per_step, device, args.seconds, True)
            peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:8.2f}" if device.type == "cuda" else f"{'n/a':>8}"
            print(
                f"{row} {first:>8.1f} {ups:>10.2f} {serial:>11.2f} {overlapped:>10.2f} {peak} {flops / 1e9:>9.2f} "
                f"{flops * ups / 1e12:>8.4f}",
                flush=True,
            )
            del update, update_step, batch
    serial_envs.close()
    async_envs.close()
