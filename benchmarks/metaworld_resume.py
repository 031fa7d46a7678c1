"""Exact resume of every MetaWorld task through brc_envs.MetaWorldEnv's checkpoint state (~1-2 CPU minutes).

    python benchmarks/metaworld_resume.py                  # all 50 tasks
    python benchmarks/metaworld_resume.py reach-v3 push-v3

Per task, with random goals and 60-step episodes: 90 random steps (one episode end), then the state goes through a
checkpoint file (torch.save, then torch.load(weights_only=True) as --resume loads it) into an env built with another
seed; both envs then take the same 100 random actions, across another episode end and its new goal. Every
observation, reward, truncation and success flag must be equal, bit for bit. tests/test_metaworld.py checks three
tasks the same way; this checks them all.
"""

import io
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from brc_utils import envs as brc_envs  # noqa: E402


def roll(env, actions) -> list:
    out = []
    for action in actions:
        obs, reward, _, truncated, info = env.step(action)
        out.append((obs.copy(), reward, truncated, info["success"]))
        if truncated:
            out.append((env.reset()[0].copy(), None, None, None))
    return out


def first_difference(task: str):
    """None if the restored env repeats the original exactly, else the index of the first differing step."""
    rng = np.random.default_rng(0)
    env = brc_envs.MetaWorldEnv(f"metaworld-{task}", 5, 60, goals="random")
    env.reset(seed=7)
    roll(env, rng.uniform(-1, 1, (90, 4)))
    buffer = io.BytesIO()
    torch.save(env.state, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    actions = rng.uniform(-1, 1, (100, 4))
    first = roll(env, actions)
    other = brc_envs.MetaWorldEnv(f"metaworld-{task}", 123, 60, goals="random")
    other.reset()
    other.state = saved
    second = roll(other, actions)
    for i, ((o1, *rest1), (o2, *rest2)) in enumerate(zip(first, second)):
        if not np.array_equal(o1, o2) or rest1 != rest2:
            return i
    return None if len(first) == len(second) else min(len(first), len(second))


def main():
    tasks = sys.argv[1:] or [t.removeprefix("metaworld-") for t in brc_envs.metaworld_tasks()]
    start = time.time()
    differ = {task: step for task in tasks if (step := first_difference(task)) is not None}
    print(f"{len(tasks)} tasks in {time.time() - start:.0f} s; exact: {len(tasks) - len(differ)}", end="")
    print(f"; NOT exact (task: first differing step): {differ}" if differ else "")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
