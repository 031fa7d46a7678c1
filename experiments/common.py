"""Shared helpers of the experiment scripts: run bro_mt configurations, collect their eval curves, aggregate.

- `add_training_args` / `bro_args`: the flags every experiment shares, turned into a `bro_mt.Args`.
- `run_jobs`: train each `Job` with `bro_mt.main` in its own fresh process and working directory (at most `--jobs`
  at a time, one thread each), read its `eval/return/{task}` curve from TensorBoard and append the rows to a CSV
  as soon as it finishes. Jobs whose run id is already in the CSV are skipped, so an interrupted script resumes.
- `iqm`, `iqm_bootstrap_ci`: the interquartile mean and a stratified bootstrap confidence interval (as rliable).
- `read_csv`, `curves`, `summarize`: read the results back, per config and task, and print the final numbers.

Returns are in each task's own units (dm_control: 0..1000), also for a task whose training rewards were rescaled.
"""

import argparse
import concurrent.futures
import contextlib
import csv
import glob
import hashlib
import multiprocessing
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per training process; inherited by the workers
os.environ.setdefault("MKL_NUM_THREADS", "1")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "experiments", "results")
RUNS = os.path.join(ROOT, "experiments", "runs")  # TensorBoard logs and checkpoints (git-ignored)
sys.path.insert(0, ROOT)

COLUMNS = ["experiment", "config", "seed", "run", "task", "step", "return", "updates", "wall_s"]
MAX_RETURN = 1000.0  # dm_control returns lie in [0, 1000]: the per-task normaliser of the aggregate


# ---- Running one configuration ----
@dataclass
class Job:
    """One bro_mt training run. `run` is its unique id (also its working directory under experiments/runs/)."""

    experiment: str
    config: str
    seed: int
    run: str
    args: dict  # bro_mt.Args fields
    reward_scales: dict = field(default_factory=dict)  # task -> factor applied to its training rewards

    @property
    def workdir(self) -> str:
        return os.path.join(RUNS, self.experiment, self.run)


def add_training_args(parser: argparse.ArgumentParser, steps: int, seeds=(1, 2, 3)):
    """The flags every experiment shares. The defaults are the small, fast settings experiments/README.md reports."""
    g = parser.add_argument_group("training (passed to bro_mt)")
    g.add_argument("--seeds", type=int, nargs="+", default=list(seeds), help="seeds, one run per config and seed")
    g.add_argument("--steps", type=int, default=steps, help="environment steps per task of each run")
    g.add_argument("--width", type=int, default=64, help="critic width (paper: 4096)")
    g.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="batch of a single-task update; multi-task runs use "
        "this times the number of tasks, i.e. the same samples per task per update",
    )
    g.add_argument("--updates-per-step", type=int, default=1, help="gradient updates per environment step (paper: 2)")
    g.add_argument("--tau", type=float, default=0.05, help="Polyak rate (paper: 0.005; faster learning at small scale)")
    g.add_argument("--learning-rate", type=float, default=1e-3, help="AdamW learning rate (paper: 3e-4)")
    g.add_argument("--learning-starts", type=int, default=1000, help="random-action steps (paper: 5000)")
    g.add_argument("--max-episode-steps", type=int, default=None, help="episode cut (default: 1000, dm_control's)")
    g.add_argument("--eval-interval", type=int, default=1000, help="evaluate every N environment steps")
    g.add_argument("--eval-episodes", type=int, default=5, help="deterministic evaluation episodes per task")
    g.add_argument("--jobs", type=int, default=2, help="training processes at a time (one thread each)")
    g.add_argument("--csv", default=None, help="output CSV (default: experiments/results/<experiment>.csv)")


def bro_args(ns: argparse.Namespace, env_ids: list[str], seed: int, exp_name: str, **overrides) -> dict:
    """bro_mt.Args fields for one run from the shared flags; `overrides` wins (e.g. critic_loss, init_from)."""
    args = dict(
        env_ids=env_ids,
        seed=seed,
        exp_name=exp_name,
        critic_width=ns.width,
        batch_size=ns.batch_size * len(env_ids),
        updates_per_step=ns.updates_per_step,
        tau=ns.tau,
        learning_rate=ns.learning_rate,
        learning_starts=ns.learning_starts,
        total_timesteps=ns.steps,
        buffer_size=max(ns.steps, 1),
        max_episode_steps=ns.max_episode_steps,
        eval_interval=ns.eval_interval,
        eval_episodes=ns.eval_episodes,
        log_interval=ns.eval_interval,
    )
    args.update(overrides)
    return args


def train(job: Job) -> dict:
    """Worker: run bro_mt.main for `job` in its own working directory and return its eval rows.

    Runs in a fresh process (see `run_jobs`), so patching `brc_utils.envs.DMCEnv` for a reward rescale touches nobody else.
    A run that stops itself (bro_mt raises SystemExit on a non-finite loss) returns the rows it logged so far;
    one stopped from outside (Ctrl-C, SIGTERM: bro_mt saves and returns early) is marked `interrupted`.
    """
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    import bro_mt
    from brc_utils import envs as brc_envs

    if job.reward_scales:
        scales = job.reward_scales

        class ScaledRewardEnv(brc_envs.DMCEnv):
            """The same task with its rewards multiplied by a constant (training and evaluation envs alike)."""

            def step(self, action):
                obs, reward, terminated, truncated, info = super().step(action)
                return obs, reward * scales.get(self.env_id, 1.0), terminated, truncated, info

        brc_envs.DMCEnv = ScaledRewardEnv  # make_env builds dm_control envs through this module-level name
    os.makedirs(job.workdir, exist_ok=True)
    os.chdir(job.workdir)
    error, start = None, time.time()
    with open("train.log", "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        try:
            checkpoint = bro_mt.main(bro_mt.Args(**job.args))
        except SystemExit as e:
            checkpoint, error = None, str(e)
    run_dirs = [os.path.dirname(checkpoint)] if checkpoint else sorted(glob.glob("runs/*"), key=os.path.getmtime)
    updates, interrupted = None, False
    if checkpoint:  # the optimiser's step counter is the true number of gradient updates
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = saved["critic_optimizer"]["state"]
        updates = int(next(iter(state.values()))["step"]) if state else 0
        interrupted = saved["global_step"] < job.args["total_timesteps"]
        checkpoint = os.path.abspath(checkpoint)
    rows = eval_rows(job, run_dirs[-1], start) if run_dirs else []
    return {
        "rows": rows,
        "updates": updates,
        "checkpoint": checkpoint,
        "error": error,
        "interrupted": interrupted,
        "wall_s": time.time() - start,
    }


def eval_rows(job: Job, run_dir: str, start: float) -> list[dict]:
    """The run's `eval/return/{task}` scalars from TensorBoard, as CSV rows (returns in the task's own units)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    ups, starts = job.args["updates_per_step"], job.args["learning_starts"]
    rows = []
    for task in job.args["env_ids"]:
        tag = f"eval/return/{task}"
        for e in events.Scalars(tag) if tag in events.Tags()["scalars"] else []:
            rows.append(
                {
                    "experiment": job.experiment,
                    "config": job.config,
                    "seed": job.seed,
                    "run": job.run,
                    "task": task,
                    "step": e.step,
                    "return": round(e.value / job.reward_scales.get(task, 1.0), 2),
                    "updates": max(0, e.step - starts + 1) * ups,  # updates from the step storing the starts-th
                    "wall_s": round(e.wall_time - start, 1),
                }
            )
    return rows


def run_jobs(jobs: list[Job], csv_path: str, max_workers: int) -> dict:
    """Train every job not yet in `csv_path`, `max_workers` at a time, each in a fresh process; append its rows.

    Returns {run id: the worker's result} for the jobs run now (checkpoint paths, updates, errors).
    """
    done = {row["run"] for row in read_csv(csv_path)} if os.path.exists(csv_path) else set()
    todo = [job for job in jobs if job.run not in done]
    print(
        f"{len(jobs)} runs, {len(jobs) - len(todo)} already in {os.path.relpath(csv_path, ROOT)}; "
        f"running {len(todo)}, {max_workers} at a time (logs: experiments/runs/<experiment>/<run>/train.log)",
        flush=True,
    )
    print(code_version(), flush=True)
    results, start = {}, time.time()
    context = multiprocessing.get_context("spawn")  # a fresh interpreter per run: clean module state, one thread
    with concurrent.futures.ProcessPoolExecutor(max_workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {pool.submit(train, job): job for job in todo}
        for job in todo:
            print(f"  queued {job.run}", flush=True)
        for future in concurrent.futures.as_completed(futures):
            job, result = futures[future], future.result()
            if result["interrupted"]:  # not recorded, so that the next invocation trains it again
                print(f"  interrupted {job.run}: not written to the CSV", flush=True)
                continue
            expected = (
                max(0, job.args["total_timesteps"] - job.args["learning_starts"] + 1) * job.args["updates_per_step"]
            )
            if result["updates"] is not None and result["updates"] != expected:
                print(f"  warning: {job.run} did {result['updates']} updates, expected {expected}")
            append_csv(csv_path, result["rows"])
            results[job.run] = result
            final_step = max([r["step"] for r in result["rows"]], default=None)
            last = {r["task"]: r["return"] for r in result["rows"] if r["step"] == final_step}
            status = f"FAILED ({result['error']})" if result["error"] else "done"
            print(
                f"  {status} {job.run} in {result['wall_s']:.0f}s, {result['updates']} updates; final eval "
                + ", ".join(f"{t} {v:.0f}" for t, v in last.items())
                + f" [{len(results)}/{len(todo)}, {time.time() - start:.0f}s elapsed]",
                flush=True,
            )
    return results


def code_version() -> str:
    """Which bro_mt.py trained these runs: its git commit, whether it had local changes, and its content hash."""
    path = os.path.join(ROOT, "bro_mt.py")
    with open(path, "rb") as f:
        sha1 = hashlib.sha1(f.read()).hexdigest()[:10]
    try:
        git = ["git", "-C", ROOT]
        commit = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["diff", "--quiet", "HEAD", "--", "bro_mt.py"]).returncode != 0
        return f"bro_mt.py: sha1 {sha1}, git {commit}{' + local changes' if dirty else ''}"
    except OSError:
        return f"bro_mt.py: sha1 {sha1}"


# ---- CSV ----
def append_csv(path: str, rows: list[dict]):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def read_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return [
            {
                **r,
                "seed": int(r["seed"]),
                "step": int(r["step"]),
                "return": float(r["return"]),
                "updates": int(r["updates"]),
                "wall_s": float(r["wall_s"]),
            }
            for r in csv.DictReader(f)
        ]


def curves(rows: list[dict]) -> dict:
    """{config: {task: (steps [n], returns [seeds, n])}}, configs sorted by name, at the steps every seed reached."""
    out = {}
    for config in sorted({r["config"] for r in rows}):
        out[config] = {}
        for task in dict.fromkeys(r["task"] for r in rows if r["config"] == config):
            by_seed = {}
            for r in rows:
                if r["config"] == config and r["task"] == task:
                    by_seed.setdefault(r["seed"], {})[r["step"]] = r["return"]
            steps = sorted(set.intersection(*(set(s) for s in by_seed.values())))
            out[config][task] = (np.array(steps), np.array([[s[t] for t in steps] for s in by_seed.values()]))
    return out


# ---- Aggregation (IQM, stratified bootstrap) ----
def iqm(scores) -> float:
    """Interquartile mean: the mean of the middle 50% of all scores (runs x tasks pooled)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.ravel(scores), 0.25))


def iqm_bootstrap_ci(scores: np.ndarray, reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% stratified bootstrap CI of the IQM of `scores` [runs, tasks]: resample runs within each task."""
    from scipy.stats import trim_mean

    runs, tasks = scores.shape
    index = np.random.default_rng(seed).integers(0, runs, (reps, runs, tasks))
    samples = scores[index, np.arange(tasks)].reshape(reps, -1)  # [reps, runs * tasks]
    lo, hi = np.percentile(trim_mean(samples, 0.25, axis=1), [2.5, 97.5])
    return float(lo), float(hi)


def aggregate(config_curves: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IQM over seeds and tasks of the normalised return (return / 1000) per step, with its 95% CI."""
    common = sorted(set.intersection(*(set(steps) for steps, _ in config_curves.values())))
    iqms, lows, highs = [], [], []
    for step in common:
        scores = np.stack([r[:, list(steps).index(step)] for steps, r in config_curves.values()], 1) / MAX_RETURN
        iqms.append(iqm(scores))
        lo, hi = iqm_bootstrap_ci(scores)
        lows.append(lo)
        highs.append(hi)
    return np.array(common), np.array(iqms), np.array(lows), np.array(highs)


def total_updates(rows: list[dict], config: str) -> int:
    """Gradient updates of one seed of `config`, summed over its runs (one per task for single-task agents)."""
    seed = min(r["seed"] for r in rows if r["config"] == config)
    last = {}
    for r in rows:
        if r["config"] == config and r["seed"] == seed:
            last[r["run"]] = max(last.get(r["run"], 0), r["updates"])
    return sum(last.values())


def summarize(csv_path: str):
    """Print the final evaluation of every config: per task mean +- std over seeds, and the aggregate IQM."""
    rows = read_csv(csv_path)
    print(
        f"\nfinal evaluation ({os.path.relpath(csv_path, ROOT)}); returns in the tasks' own units, mean +- std "
        "over seeds; IQM of return/1000 over seeds x tasks with 95% stratified bootstrap CI"
    )
    for config, task_curves in curves(rows).items():
        steps, value, lo, hi = aggregate(task_curves)
        wall = sum(
            max(r["wall_s"] for r in rows if r["run"] == run)
            for run in {r["run"] for r in rows if r["config"] == config}
        )
        parts = [f"{task} {r[:, -1].mean():.0f}+-{r[:, -1].std():.0f}" for task, (_, r) in task_curves.items()]
        print(
            f"  {config:<22} @ {steps[-1]:,} steps | "
            + " | ".join(parts)
            + f" | IQM {value[-1]:.3f} [{lo[-1]:.3f}, {hi[-1]:.3f}] | updates/seed {total_updates(rows, config):,}"
            + f" | {wall / 60:.1f} run-min",
            flush=True,
        )


def csv_path_for(ns: argparse.Namespace, experiment: str) -> str:
    return ns.csv or os.path.join(RESULTS, f"{experiment}.csv")
