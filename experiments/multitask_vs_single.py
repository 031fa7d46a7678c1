"""Claim 1: one multi-task BRC agent matches single-task agents at equal environment steps, with fewer updates.

Per seed, one multi-task agent learns all `--tasks` at once (task embedding, categorical critic, reward
normalisation: BRC as in bro_mt.py) and one single-task agent learns each task alone. Every task gets the same
number of environment steps in both arms. The multi-task agent does `--updates-per-step` updates per step for all
tasks together, the single-task agents that many each, so it does 1/len(tasks) of their total updates; its batch
is len(tasks) times larger, so both arms see the same number of samples per task per update.

    python experiments/multitask_vs_single.py            # the defaults are what experiments/README.md reports
    python experiments/plot.py multitask_vs_single

Writes experiments/results/multitask_vs_single.csv (rows are appended as runs finish; runs already there are skipped).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

EXPERIMENT = "multitask_vs_single"


def make_jobs(ns: argparse.Namespace) -> list[common.Job]:
    jobs = []
    for seed in ns.seeds:
        args = common.bro_args(ns, ns.tasks, seed, "multi_task")
        jobs.append(common.Job(EXPERIMENT, "multi-task", seed, f"multi-task/seed{seed}", args))
        for task in ns.tasks:
            args = common.bro_args(ns, [task], seed, "single_task")
            jobs.append(common.Job(EXPERIMENT, "single-task", seed, f"single-task/{task}/seed{seed}", args))
    return jobs


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["cartpole-balance", "cartpole-swingup"],
        help="dm_control tasks of the multi-task agent; each also gets a single-task agent",
    )
    common.add_training_args(parser, steps=10_000, seeds=(1, 2, 3, 4, 5))
    ns = parser.parse_args()
    csv_path = common.csv_path_for(ns, EXPERIMENT)
    start = time.time()
    common.run_jobs(make_jobs(ns), csv_path, ns.jobs)
    print(f"wall-clock {(time.time() - start) / 60:.1f} min")
    common.summarize(csv_path)
