"""The B of BRC: does a bigger critic make one multi-task agent learn better, in the RL loop?

One multi-task agent learns `--tasks` (default DMC_EASY: four dm_control tasks with different observation and action
sizes) at each critic width in `--widths`, with the same data budget (environment steps per task), the same number
of gradient updates and the same batch for every width. The critic keeps the presets' shape (BroNet of depth 2,
ensemble of 2, categorical over 101 atoms, task embedding of 32); only its width changes, as `--model-size` does
(the presets are 512 .. 16384; 32 .. 512 is what a 2-core CPU can run). Everything else is the shared setting of
the other experiments (experiments/README.md says where it departs from the paper and why).

    python experiments/model_size.py                # 5 widths x 5 seeds; the defaults are what the README reports
    python experiments/model_size.py --report       # the summary, update times and the figure, from the CSV
    python experiments/plot.py model_size           # the per-task curves

Writes experiments/results/model_size.csv (rows are appended as runs finish; runs already there are skipped) and,
with the report, experiments/results/model_size_width.png (return against width, log axis, with the cost).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

EXPERIMENT = "model_size"
DMC_EASY = ["cartpole-balance", "cartpole-swingup", "point_mass-easy", "reacher-easy"]


def config_name(width: int) -> str:
    return f"width-{width:04d}"  # zero-padded, so that configs sort by width


def make_jobs(ns: argparse.Namespace) -> list[common.Job]:
    """Seed-major order, so that an interrupted experiment has every width at the seeds it finished."""
    jobs = []
    for seed in ns.seeds:
        for width in ns.widths:
            args = common.bro_args(ns, ns.tasks, seed, f"width{width}", critic_width=width)
            jobs.append(common.Job(EXPERIMENT, config_name(width), seed, f"{config_name(width)}/seed{seed}", args))
    return jobs


# ---- The report: return against width, with the cost ----
def parameter_counts(ns: argparse.Namespace, width: int) -> dict:
    """Parameters of one critic member, of the ensemble and of the actor, for the tasks' padded sizes."""
    import bro_mt
    from brc_utils.envs import make_env

    envs = [make_env(task, seed=0) for task in ns.tasks]
    obs_dim, action_dim = max(env.obs_size for env in envs), max(env.action_size for env in envs)
    return bro_mt.model_parameter_counts(obs_dim, action_dim, len(ns.tasks), width)


def update_times(ns: argparse.Namespace, seconds: float = 5.0) -> dict:
    """ms per gradient update at each width: eager, one thread, the experiment's batch and padded sizes, timed with
    benchmarks/bench_mt.py's own update (the training loop's `update` on random data), after 5 warm-up updates."""
    import types

    import torch

    sys.path.insert(0, os.path.join(common.ROOT, "benchmarks"))
    import bench_mt
    from brc_utils.envs import make_env

    torch.set_num_threads(1)
    envs = [make_env(task, seed=0) for task in ns.tasks]
    sizes = types.SimpleNamespace(
        batch_size=ns.batch_size * len(ns.tasks),
        obs_dim=max(env.obs_size for env in envs),
        action_dim=max(env.action_size for env in envs),
        num_tasks=len(ns.tasks),
        seconds=seconds,
    )
    times = {}
    for width in ns.widths:
        rate = bench_mt.time_updates(sizes, width, torch.device("cpu"), {})["updates_per_s"]
        times[width] = 1000.0 / rate
    return times


def width_scores(rows: list[dict], width: int, tasks: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """[seeds, tasks] normalised scores of one width: the final evaluation and the mean over the curve."""
    task_curves = common.curves([r for r in rows if r["config"] == config_name(width)])[config_name(width)]
    final = np.stack([task_curves[t][1][:, -1] for t in tasks], 1) / common.MAX_RETURN
    mean = np.stack([task_curves[t][1].mean(1) for t in tasks], 1) / common.MAX_RETURN
    return final, mean


def report(ns: argparse.Namespace, csv_path: str, times: dict | None):
    """Print per width: IQM of final and curve-mean scores (95% CI), per-task finals, parameters, cost; draw it."""
    rows = common.read_csv(csv_path)
    widths = [w for w in ns.widths if any(r["config"] == config_name(w) for r in rows)]
    print(
        f"\n{EXPERIMENT}: {len(widths)} widths; scores are return / 1000, IQM over seeds x tasks with 95% stratified "
        "bootstrap CI; 'curve' is the mean over every evaluation of a run (area under the curve)"
    )
    table = []
    for width in widths:
        final, mean = width_scores(rows, width, ns.tasks)
        runs = {r["run"] for r in rows if r["config"] == config_name(width)}
        wall = [max(r["wall_s"] for r in rows if r["run"] == run) for run in runs]
        counts = parameter_counts(ns, width)
        entry = {
            "width": width,
            "seeds": final.shape[0],
            "final": (common.iqm(final), *common.iqm_bootstrap_ci(final)),
            "curve": (common.iqm(mean), *common.iqm_bootstrap_ci(mean)),
            "tasks": final.mean(0) * common.MAX_RETURN,
            "member": counts["critic_member"],
            "run_min": float(np.mean(wall)) / 60,
            "ms_update": (times or {}).get(width),
        }
        table.append(entry)
        per_task = " | ".join(f"{t} {v:.0f}" for t, v in zip(ns.tasks, entry["tasks"]))
        ms = f"{entry['ms_update']:.1f} ms/update" if entry["ms_update"] else "update time not measured"
        print(
            f"  width {width:>4} ({entry['member']:>9,} params/member, {entry['seeds']} seeds): "
            f"final IQM {entry['final'][0]:.3f} [{entry['final'][1]:.3f}, {entry['final'][2]:.3f}]  "
            f"curve IQM {entry['curve'][0]:.3f} [{entry['curve'][1]:.3f}, {entry['curve'][2]:.3f}]  | {per_task} | "
            f"{entry['run_min']:.1f} min/run, {ms}",
            flush=True,
        )
    if table:
        print(f"wrote {os.path.relpath(plot_width(table), common.ROOT)}")


def plot_width(table: list[dict]) -> str:
    """Return against critic width (log axis) with 95% CIs, and the cost of a run on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = np.array([e["width"] for e in table])
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for key, label, color, shift in (
        ("final", "final evaluation", "C0", 0.97),
        ("curve", "mean over the curve", "C1", 1.03),
    ):
        value = np.array([e[key][0] for e in table])
        low = np.array([e[key][1] for e in table])
        high = np.array([e[key][2] for e in table])
        ax.errorbar(
            widths * shift, value, yerr=[value - low, high - value], color=color, marker="o", capsize=3, label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(widths, [f"{w}\n{e['member'] / 1e3:.0f}k" for w, e in zip(widths, table)])
    ax.set_xlabel("critic width (parameters per ensemble member)", fontsize=8)
    ax.set_ylabel("IQM of return / 1000 (95% CI)", fontsize=8)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    cost = ax.twinx()  # the cost: ms per update where measured (the run times include a shared machine's load)
    measured = all(e["ms_update"] for e in table)
    values = [e["ms_update"] if measured else e["run_min"] for e in table]
    label = "ms per update, one CPU thread" if measured else "minutes per run, one CPU thread"
    cost.plot(widths, values, color="0.4", linestyle="--", marker="s", markersize=3, label=f"{label} (right)")
    cost.set_ylabel(label, fontsize=8)
    cost.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + cost.get_legend_handles_labels()[0]
    labels = ax.get_legend_handles_labels()[1] + cost.get_legend_handles_labels()[1]
    ax.legend(handles, labels, fontsize=7, loc="upper left")
    seeds = min(e["seeds"] for e in table)
    ax.set_title(f"model_size: one agent on {len(table[0]['tasks'])} DMC tasks, {seeds}+ seeds per width", fontsize=9)
    for a in (ax, cost):
        a.tick_params(labelsize=7)
    fig.tight_layout()
    path = os.path.join(common.RESULTS, f"{EXPERIMENT}_width.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=DMC_EASY, help="dm_control tasks of the multi-task agent")
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512], help="critic widths")
    parser.add_argument("--report", action="store_true", help="only summarise and plot what the CSV holds")
    parser.add_argument("--no-update-times", action="store_true", help="skip timing one update per width")
    common.add_training_args(parser, steps=10_000, seeds=(1, 2, 3, 4, 5))
    ns = parser.parse_args()
    csv_path = common.csv_path_for(ns, EXPERIMENT)
    if not ns.report:
        start = time.time()
        common.run_jobs(make_jobs(ns), csv_path, ns.jobs)
        print(f"wall-clock {(time.time() - start) / 60:.1f} min")
    report(ns, csv_path, None if ns.no_update_times else update_times(ns))
