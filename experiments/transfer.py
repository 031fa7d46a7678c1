"""Claim 3: a critic pretrained on many tasks learns held-out tasks more sample-efficiently than one from scratch.

Phase 1 pretrains one multi-task BRC agent per seed on `--pretrain-tasks` (or takes `--pretrained` checkpoints).
Phase 2 learns the held-out `--tasks` together, in three ways per seed: from scratch, from the pretrained
checkpoint (`bro_mt.py --init-from`: critic trunk, head and actor copied; new task embeddings start at the mean
direction of the pretrained ones), and from the checkpoint with the critic trunk frozen (`--freeze-trunk`).
Held-out tasks must fit the pretrained padded sizes (observation and action dims), and every run shares the
critic width. The first evaluation (at `--learning-starts`, before any update) is the zero-shot policy.

    python experiments/transfer.py                       # pretrains, then transfers
    python experiments/transfer.py --pretrained A.pt B.pt C.pt   # reuse checkpoints, one per seed
    python experiments/plot.py transfer

Writes experiments/results/transfer.csv (held-out tasks) and transfer_pretrain.csv (phase 1, when it runs); rows
are appended as runs finish and runs already there are skipped.
"""

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

EXPERIMENT = "transfer"
CONFIGS = {  # name -> does it start from the pretrained checkpoint, does it freeze the critic trunk
    "scratch": (False, False),
    "pretrained": (True, False),
    "pretrained-frozen": (True, True),
}


def pretrain(ns: argparse.Namespace, csv_path: str) -> dict:
    """Phase 1: {seed: checkpoint path}, training the seeds not yet in `csv_path`."""
    jobs = [
        common.Job(
            EXPERIMENT,
            "pretrain",
            seed,
            f"pretrain/seed{seed}",
            common.bro_args(
                ns,
                ns.pretrain_tasks,
                seed,
                "pretrain",
                total_timesteps=ns.pretrain_steps,
                buffer_size=ns.pretrain_steps,
            ),
        )
        for seed in ns.seeds
    ]
    common.run_jobs(jobs, csv_path, ns.jobs)
    finished = {row["run"] for row in common.read_csv(csv_path)} if os.path.exists(csv_path) else set()
    checkpoints = {}
    for job in jobs:  # the newest checkpoint of a finished run is its final one
        found = sorted(glob.glob(os.path.join(job.workdir, "runs", "*", "checkpoint.pt")), key=os.path.getmtime)
        if job.run not in finished or not found:
            raise SystemExit(f"pretraining {job.run} did not finish; see {job.workdir}/train.log")
        checkpoints[job.seed] = found[-1]
    return checkpoints


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--pretrain-tasks",
        nargs="+",
        default=["cartpole-balance", "cartpole-swingup"],
        help="tasks of the pretrained multi-task agent",
    )
    parser.add_argument("--pretrain-steps", type=int, default=10_000, help="environment steps per pretraining task")
    parser.add_argument(
        "--pretrained",
        nargs="+",
        default=None,
        metavar="CHECKPOINT",
        help="skip phase 1: bro_mt checkpoints, one per seed in --seeds order (same critic width)",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        default=["cartpole-balance_sparse", "cartpole-swingup_sparse"],
        help="held-out tasks, learned together (their sizes must fit the pretrained ones)",
    )
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    common.add_training_args(parser, steps=5_000, seeds=(1, 2, 3, 4, 5))
    ns = parser.parse_args()
    csv_path = common.csv_path_for(ns, EXPERIMENT)
    start = time.time()
    if ns.pretrained:
        if len(ns.pretrained) != len(ns.seeds):
            raise SystemExit(f"--pretrained gives {len(ns.pretrained)} checkpoints for {len(ns.seeds)} seeds")
        checkpoints = dict(zip(ns.seeds, map(os.path.abspath, ns.pretrained)))
    else:
        checkpoints = pretrain(ns, csv_path.removesuffix(".csv") + "_pretrain.csv")
    jobs = []
    for seed in ns.seeds:
        for config in ns.configs:
            init, freeze = CONFIGS[config]
            args = common.bro_args(
                ns, ns.tasks, seed, config, init_from=checkpoints[seed] if init else None, freeze_trunk=freeze
            )
            jobs.append(common.Job(EXPERIMENT, config, seed, f"{config}/seed{seed}", args))
    common.run_jobs(jobs, csv_path, ns.jobs)
    print(f"wall-clock {(time.time() - start) / 60:.1f} min")
    common.summarize(csv_path)
