"""Speed of bro_atari.py: emulator frames/s of a game set, gradient updates/s per head preset, and the loop's rate.

    python benchmarks/bench_atari.py                                  # ATARI_QUICK, presets 1M 4M, batch 32 on CPU
    python benchmarks/bench_atari.py --presets 1M --batch-size 64 --threads 1
    python benchmarks/bench_atari.py --presets 16M 64M 256M --device cuda --env-ids ATARI_5

Frames/s steps every game of --env-ids once per step with random actions through bro_atari.AtariGame (4 emulator
frames per step, max-pool and 84x84 resize included); network forward passes are not included. An update is
bro_atari.update (critic cross-entropy -> AdamW -> Polyak) on a random batch of uint8 frame stacks, so it times
exactly the code the training loop runs (replay sampling excluded). The loop does one step of every game plus
--updates-per-step updates, so its rate is about 1 / (t_step + updates_per_step * t_update).
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bro_atari  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_frames(games, seconds):
    envs = [bro_atari.AtariGame(game, i, full_action_space=len(games) > 1) for i, game in enumerate(games)]
    rng = np.random.default_rng(0)
    for env in envs:
        env.reset()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for env in envs:
            _, _, terminated, truncated, _ = env.step(int(rng.integers(env.num_actions)))
            if terminated or truncated:
                env.reset()
        steps += 1
    return steps / (time.perf_counter() - start)


def time_updates(width, encoder_width, batch_size, num_games, device, seconds):
    net_args = (num_games, 18, width, encoder_width)
    q_network, target_network = bro_atari.QNetwork(*net_args).to(device), bro_atari.QNetwork(*net_args).to(device)
    target_network.load_state_dict(q_network.state_dict())
    target_network.requires_grad_(False)
    optimizer = torch.optim.AdamW(q_network.parameters(), 3e-4, weight_decay=1e-4)
    frames = lambda: torch.randint(0, 256, (batch_size, 4, 84, 84), dtype=torch.uint8, device=device)  # noqa: E731
    batch = bro_atari.Batch(frames(), torch.randint(18, (batch_size,), device=device), torch.randn(batch_size, device=device),
                            torch.full((batch_size,), 0.99**3, device=device), frames(),
                            torch.randint(num_games, (batch_size,), device=device))
    support = torch.linspace(-10, 10, 101, device=device)
    for _ in range(3):  # warm-up (allocator, kernels)
        bro_atari.update(batch, q_network, target_network, optimizer, support, 0.005)
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        bro_atari.update(batch, q_network, target_network, optimizer, support, 0.005)
        count += 1
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return count / (time.perf_counter() - start), peak


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["1M", "4M"], choices=list(bro_atari.MODEL_SIZES))
    parser.add_argument("--widths", nargs="*", type=int, default=[], help="extra head widths to time")
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
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    games = bro_atari.resolve_env_ids(args.env_ids)
    steps_per_s = time_frames(games, args.seconds)
    print(f"emulation ({len(games)} games: {', '.join(games)}): {steps_per_s:.1f} steps/s = "
          f"{steps_per_s * len(games) * bro_atari.FRAME_SKIP:.0f} frames/s")
    print(f"batch {args.batch_size}, encoder width {args.encoder_width}")
    print(f"{'preset':>7} {'width':>6} {'parameters':>12} {'updates/s':>10} {'loop steps/s':>13} {'peak GiB':>9}")
    for name, width in [(p, bro_atari.MODEL_SIZES[p]) for p in args.presets] + [("custom", w) for w in args.widths]:
        counts = bro_atari.model_parameter_counts(len(games), 18, width, args.encoder_width)
        ups, peak = time_updates(width, args.encoder_width, args.batch_size, len(games), device, args.seconds)
        loop = 1 / (1 / steps_per_s + args.updates_per_step / ups)
        print(f"{name:>7} {width:>6} {counts['total']:>12,} {ups:>10.2f} {loop:>13.2f} {peak:>9.2f}", flush=True)
