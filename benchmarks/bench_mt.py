"""Speed of bro_mt.py: gradient updates/s per critic preset, environment steps/s, and the full loop's steps/s.

    python benchmarks/bench_mt.py --presets 1M 4M                     # dog-sized inputs, batch 1024
    python benchmarks/bench_mt.py --presets 1M --threads 1
    python benchmarks/bench_mt.py --presets 64M 256M --device cuda

An update is bro_mt.update (critic -> Polyak -> actor -> temperature) on random data of the given sizes, so it
times exactly the code the training loop runs. Environment steps/s steps every task of --env-ids once per step
and samples the actor, as the loop does after learning starts. The full loop does one environment step and
--updates-per-step updates per step, so its rate is 1 / (t_env + updates_per_step * t_update).
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bro_mt  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_updates(width, batch_size, obs_dim, action_dim, num_tasks, device, seconds):
    critic = bro_mt.Critic(obs_dim, action_dim, num_tasks, width).to(device)
    target = bro_mt.Critic(obs_dim, action_dim, num_tasks, width).to(device)
    target.load_state_dict(critic.state_dict())
    actor = bro_mt.Actor(obs_dim, action_dim, critic.embedding_dim).to(device)
    log_alpha = torch.tensor(math.log(0.1), device=device, requires_grad=True)
    optimizers = (torch.optim.AdamW(critic.parameters(), 3e-4, weight_decay=1e-4),
                  torch.optim.AdamW(actor.parameters(), 3e-4, weight_decay=1e-4),
                  torch.optim.Adam([log_alpha], 3e-4, betas=(0.5, 0.999)))
    batch = bro_mt.Batch(torch.randn(batch_size, obs_dim, device=device),
                         torch.rand(batch_size, action_dim, device=device) * 2 - 1,
                         torch.rand(batch_size, device=device), torch.randn(batch_size, obs_dim, device=device),
                         torch.zeros(batch_size, device=device), torch.randint(num_tasks, (batch_size,), device=device))
    masks, entropy = torch.ones(num_tasks, action_dim, device=device), torch.full((num_tasks,), -action_dim / 2, device=device)
    support, g_bar = torch.linspace(-10, 10, 101, device=device), torch.full((num_tasks,), 100.0, device=device)

    def step():
        return bro_mt.update(batch, critic, target, actor, log_alpha, optimizers, masks, entropy, g_bar, support, 0.99,
                             0.005)

    for _ in range(3):  # warm-up (allocator, kernels)
        step()
    sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        step()
        count += 1
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return count / (time.perf_counter() - start), peak


def time_env_steps(env_ids, device, seconds):
    envs = [bro_mt.DMCEnv(env_id, i) for i, env_id in enumerate(env_ids)]
    obs_dim = max(e.observation_space.shape[0] for e in envs)
    action_dim = max(e.action_space.shape[0] for e in envs)
    actor = bro_mt.Actor(obs_dim, action_dim, 32 if len(envs) > 1 else 0).to(device)
    embedding = torch.nn.functional.normalize(torch.randn(len(envs), 32 if len(envs) > 1 else 0, device=device), dim=-1)
    mask, obs = torch.ones(len(envs), action_dim, device=device), np.zeros((len(envs), obs_dim), np.float32)
    for i, env in enumerate(envs):
        o = env.reset()[0]
        obs[i, : len(o)] = o
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        with torch.no_grad():
            actions = actor.sample(torch.as_tensor(obs, device=device), embedding, mask)[0].cpu().numpy()
        for i, env in enumerate(envs):
            o, _, terminated, truncated, _ = env.step(actions[i, : env.action_space.shape[0]])
            if terminated or truncated:
                o = env.reset()[0]
            obs[i, : len(o)] = o
        count += 1
    return count / (time.perf_counter() - start)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["1M"], choices=list(bro_mt.MODEL_SIZES))
    parser.add_argument("--widths", nargs="*", type=int, default=[], help="extra critic widths to time")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--obs-dim", type=int, default=223, help="padded observation size (dog: 223)")
    parser.add_argument("--action-dim", type=int, default=38, help="padded action size (dog: 38)")
    parser.add_argument("--num-tasks", type=int, default=7)
    parser.add_argument("--env-ids", nargs="+", default=["DMC_HARD"])
    parser.add_argument("--updates-per-step", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=10.0, help="time spent on each measurement")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cpu":
        torch.set_flush_denormal(True)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads"))
    env_ids = bro_mt.resolve_env_ids(args.env_ids)
    env_sps = time_env_steps(env_ids, device, args.seconds)
    print(f"environment steps/s ({len(env_ids)} tasks, actor sampling included): {env_sps:.1f}")
    print(f"{'preset':>7} {'width':>6} {'params/member':>14} {'updates/s':>10} {'loop steps/s':>13} {'peak GiB':>9}")
    for name, width in [(p, bro_mt.MODEL_SIZES[p]) for p in args.presets] + [("custom", w) for w in args.widths]:
        counts = bro_mt.model_parameter_counts(args.obs_dim, args.action_dim, args.num_tasks, width)
        ups, peak = time_updates(width, args.batch_size, args.obs_dim, args.action_dim, args.num_tasks, device, args.seconds)
        loop = 1 / (1 / env_sps + args.updates_per_step / ups)
        print(f"{name:>7} {width:>6} {counts['critic_member']:>14,} {ups:>10.2f} {loop:>13.2f} {peak:>9.2f}", flush=True)
