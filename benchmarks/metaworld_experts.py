"""MetaWorld's scripted expert policies driven through brc_envs.MetaWorldEnv: how often and how soon they succeed.

    python benchmarks/metaworld_experts.py                       # all 50 tasks, 5 episodes each, ~4 CPU minutes
    python benchmarks/metaworld_experts.py --tasks reach-v3 push-v3 --episodes 20

A check of the wrapper against the package's own experts (the observation they read is our padded float32 one,
unpadded; the padded action dims get junk the wrapper must ignore), and the measurement behind bro_mt.py's
episode length: how many experts succeed within 200 steps (the released code's cut) and within 500 (v3's own).
Goals are drawn anew every episode (--metaworld-goals random), from seed 0.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brc_utils import envs as brc_envs  # noqa: E402  (sets MUJOCO_GL before MuJoCo loads)


def first_successes(task: str, episodes: int, max_steps: int) -> list:
    """The step of each episode's first success (None: no success within max_steps)."""
    from metaworld.policies import ENV_POLICY_MAP

    env = brc_envs.MetaWorldEnv(f"metaworld-{task}", 0, max_steps, pad_to=(45, 6), goals="random")
    policy, found = ENV_POLICY_MAP[task](), []
    for episode in range(episodes):
        obs, _ = env.reset(seed=0 if episode == 0 else None)
        hit = None
        for step in range(1, max_steps + 1):
            action = np.concatenate([policy.get_action(obs[:39].astype(np.float64)), [0.9, -0.9]])
            obs, _, _, _, info = env.step(action)
            if info["success"]:
                hit = step
                break
        found.append(hit)
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", help="MetaWorld task names (default: all 50)")
    parser.add_argument("--episodes", type=int, default=5, help="episodes per task")
    parser.add_argument("--cut", type=int, default=200, help="the episode length to compare with --max-steps")
    parser.add_argument("--max-steps", type=int, default=500, help="the longest episode tried")
    args = parser.parse_args()
    tasks = args.tasks or [t.removeprefix("metaworld-") for t in brc_envs.metaworld_tasks()]
    warnings.filterwarnings("ignore", message="Constant")  # the experts' own warning about their gains
    start, rows = time.time(), []
    print(f"| task | success within {args.cut} | within {args.max_steps} | median first success | latest |")
    print("|---|---|---|---|---|")
    for task in tasks:
        hits = first_successes(task, args.episodes, args.max_steps)
        steps = [h for h in hits if h is not None]
        within_cut = np.mean([h is not None and h <= args.cut for h in hits])
        rows.append((within_cut, len(steps) / len(hits)))
        median = f"{np.median(steps):.0f}" if steps else "-"
        print(f"| {task} | {within_cut:.2f} | {rows[-1][1]:.2f} | {median} | {max(steps, default='-')} |", flush=True)
    cut, full = np.mean(rows, axis=0)
    print(f"\n{len(tasks)} tasks x {args.episodes} episodes in {time.time() - start:.0f} s: mean success "
          f"{cut:.3f} within {args.cut} steps, {full:.3f} within {args.max_steps}")  # fmt: skip


if __name__ == "__main__":
    main()
