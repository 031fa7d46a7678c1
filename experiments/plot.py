"""Learning curves of the experiment CSVs: experiments/results/<name>.csv -> experiments/results/<name>.png.

One panel per task (mean over seeds, band = min..max over seeds) and one aggregate panel: the IQM over seeds x
tasks of the return normalised by dm_control's maximum (1000), with a 95% stratified bootstrap confidence band.
When configs differ in their number of gradient updates (multi-task vs single-task), the legend says how many.

    python experiments/plot.py                        # every CSV in experiments/results/, the README's figures
    python experiments/plot.py transfer               # one of them
    python experiments/plot.py loss_and_reward_scale --configs mse mse+norm --suffix mse   # a custom selection
"""

import argparse
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

# The README's figures: (suffix, configs) per CSV; a CSV not listed gets one figure of all its configs.
FIGURES = {
    "loss_and_reward_scale": [
        ("", ["categorical+norm", "categorical", "mse+norm", "mse"]),
        ("conditioning", ["categorical+norm", "multihead", "no-task-id"]),
    ]
}


def plot(name: str, configs=None, suffix: str = "", dpi: int = 80) -> str:
    """Draw experiments/results/<name>.csv (only `configs`, if given) to <name>[_<suffix>].png; return its path."""
    rows = common.read_csv(os.path.join(common.RESULTS, f"{name}.csv"))
    rows = [r for r in rows if not configs or r["config"] in configs]
    config_curves = common.curves(rows)
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    updates = {config: common.total_updates(rows, config) for config in config_curves}
    show_updates = len(set(updates.values())) > 1
    fig, axes = plt.subplots(1, len(tasks) + 1, figsize=(3.6 * (len(tasks) + 1), 3.2), squeeze=False)
    for k, (config, task_curves) in enumerate(config_curves.items()):
        color = f"C{k}"
        seeds = len(next(iter(task_curves.values()))[1])
        label = f"{config} ({seeds} seeds" + (f", {updates[config]:,} updates/seed)" if show_updates else ")")
        for task, (steps, returns) in task_curves.items():
            ax = axes[0, tasks.index(task)]
            ax.plot(steps, returns.mean(0), color=color, label=label)
            ax.fill_between(steps, returns.min(0), returns.max(0), color=color, alpha=0.2, linewidth=0)
        steps, value, low, high = common.aggregate(task_curves)
        axes[0, -1].plot(steps, value, color=color, label=label)
        axes[0, -1].fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
    for ax, title in zip(axes[0], tasks + ["aggregate: IQM of return / 1000"]):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("environment steps (per task)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("evaluation return", fontsize=8)
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 3), fontsize=8, frameon=False)
    title = f"{name} ({suffix})" if suffix else name
    fig.suptitle(f"{title}: mean and min-max over seeds; aggregate: IQM with 95% stratified bootstrap CI", fontsize=9)
    for ax in axes[0]:
        ax.set_ylim(bottom=0)
    fig.tight_layout(rect=(0, 0.03 + 0.06 * ((len(labels) + 2) // 3), 1, 1))
    path = os.path.join(common.RESULTS, f"{name}_{suffix}.png" if suffix else f"{name}.png")
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="CSV names under experiments/results/ (default: all)")
    parser.add_argument("--configs", nargs="+", default=None, help="draw only these configs (default: all)")
    parser.add_argument("--suffix", default="", help="write <name>_<suffix>.png instead of <name>.png")
    parser.add_argument("--dpi", type=int, default=80)
    ns = parser.parse_args()
    names = ns.names or sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(common.RESULTS, "*.csv")))
    for name in names:
        figures = [(ns.suffix, ns.configs)] if ns.configs or ns.suffix else FIGURES.get(name, [("", None)])
        for suffix, configs in figures:
            print(f"wrote {os.path.relpath(plot(name, configs, suffix, ns.dpi), common.ROOT)}")
