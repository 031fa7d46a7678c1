"""Claim 2: cross-entropy with reward normalisation is what lets one critic learn tasks whose rewards differ in scale.

One multi-task agent learns `--tasks`, one of them with its training rewards multiplied by a constant (default:
cartpole-swingup x100, so its returns dwarf cartpole-balance's). The configs differ only in the critic loss
(categorical cross-entropy vs MSE regression) and in per-task reward normalisation (on / off); two more configs,
run on request, swap the task embedding for one head per task or for no task input at all. Evaluation returns
are reported in the tasks' own units (the rescaled task's divided back), so the curves compare directly.

    python experiments/loss_and_reward_scale.py          # the defaults are what experiments/README.md reports
    python experiments/loss_and_reward_scale.py --configs multihead no-task-id   # the conditioning ablation
    python experiments/plot.py loss_and_reward_scale

Writes experiments/results/loss_and_reward_scale.csv (rows are appended as runs finish; runs already there are skipped).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

EXPERIMENT = "loss_and_reward_scale"
CONFIGS = {  # name -> bro_mt.Args overrides
    "categorical+norm": dict(critic_loss="categorical", reward_norm=True),  # BRC
    "categorical": dict(critic_loss="categorical", reward_norm=False),
    "mse+norm": dict(critic_loss="mse", reward_norm=True),
    "mse": dict(critic_loss="mse", reward_norm=False),
    "multihead": dict(critic_loss="categorical", reward_norm=True, task_conditioning="multihead"),
    "no-task-id": dict(critic_loss="categorical", reward_norm=True, task_conditioning="none"),
}


def parse_scale(text: str) -> tuple[str, float]:
    task, factor = text.split("=")
    return task, float(factor)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["cartpole-balance", "cartpole-swingup"],
        help="dm_control tasks of the multi-task agent",
    )
    parser.add_argument(
        "--reward-scale",
        type=parse_scale,
        nargs="*",
        default=[("cartpole-swingup", 100.0)],
        metavar="TASK=FACTOR",
        help="multiply a task's training rewards by FACTOR",
    )
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=list(CONFIGS)[:4],
        help="critic loss / reward normalisation / task conditioning variants to run",
    )
    common.add_training_args(parser, steps=8_000)
    ns = parser.parse_args()
    scales = dict(ns.reward_scale)
    jobs = [
        common.Job(
            EXPERIMENT,
            config,
            seed,
            f"{config}/seed{seed}",
            common.bro_args(ns, ns.tasks, seed, config.replace("+", "_"), **CONFIGS[config]),
            scales,
        )
        for seed in ns.seeds
        for config in ns.configs
    ]
    csv_path = common.csv_path_for(ns, EXPERIMENT)
    start = time.time()
    print(f"training rewards rescaled: {scales}")
    common.run_jobs(jobs, csv_path, ns.jobs)
    print(f"wall-clock {(time.time() - start) / 60:.1f} min")
    common.summarize(csv_path)
