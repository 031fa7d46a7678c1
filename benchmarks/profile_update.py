"""Where the time of one bro_mt.py update goes, from torch.profiler: forward / backward / optimisers, the matmuls'
share, the op counts and the ops that cost most. Use it to see whether an idea makes the update cheaper.

    python benchmarks/profile_update.py                           # width 128, batch 128: the laptop command's size
    python benchmarks/profile_update.py --width 512 --batch-size 1024 --threads 2
    python benchmarks/profile_update.py --compile                 # the --compile path (compiles for ~1 minute first)

The update is `bro_mt.update` on random data (two tasks of observation 5 / action 2 unless stated), as
benchmarks/bench_mt.py builds it. Times are medians over --repeats profiled windows of --updates updates each; the
profiler adds its own overhead, so compare rows of one run, and time end to end with bench_mt.py.
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the scripts set it, before torch loads OpenMP

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_mt  # noqa: E402

MATMULS = {"aten::bmm", "aten::baddbmm", "aten::mm", "aten::addmm"}
COUNTS = ("matmul calls", "top-level ops", "backward nodes")


def outermost(events, matches) -> list:
    """The events that match and are not inside another match (their time includes what they call)."""

    def inside_a_match(e):
        parent = e.cpu_parent
        while parent is not None:
            if matches(parent):
                return True
            parent = parent.cpu_parent
        return False

    return [e for e in events if matches(e) and not inside_a_match(e)]


def breakdown(events, updates: int) -> dict:
    """Milliseconds per update of each phase. On a CPU autograd runs the backward on the calling thread, so its
    nodes are events of this thread too (inside the compiled regions' events with --compile)."""
    top = [e for e in events if e.cpu_parent is None]
    backward = outermost(events, lambda e: e.name.startswith("autograd::engine"))
    optimiser = outermost(  # Optimizer.*: eager's steps; _fused_adam*: their kernels inside compiled regions
        events,
        lambda e: e.name.startswith(("Optimizer.", "aten::_fused_adam")) or "lerp" in e.name,  # lerp: Polyak
    )
    ms = {
        "total": sum(e.cpu_time_total for e in top),
        "backward": sum(e.cpu_time_total for e in backward),
        "optimisers and Polyak": sum(e.cpu_time_total for e in optimiser),
        "matmuls (their own time)": sum(e.self_cpu_time_total for e in events if e.name in MATMULS),
        "Dynamo's guard checks": sum(e.self_cpu_time_total for e in events if e.name == "TorchDynamo Cache Lookup"),
    }
    ms["forward and the rest"] = ms["total"] - ms["backward"] - ms["optimisers and Polyak"]
    ms = {k: v / 1e3 / updates for k, v in ms.items()}
    ms["matmul calls"] = sum(1 for e in events if e.name in MATMULS) / updates
    ms["top-level ops"] = sum(1 for e in top if not e.name.startswith("autograd::engine")) / updates
    ms["backward nodes"] = len(backward) / updates
    return ms


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=128, help="critic width")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--obs-dim", type=int, default=5)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--num-tasks", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the scripts pick 1 at this size)")
    parser.add_argument("--compile", action="store_true", help="profile the --compile path")
    parser.add_argument("--updates", type=int, default=20, help="updates per profiled window")
    parser.add_argument("--repeats", type=int, default=5, help="profiled windows; the medians are printed")
    parser.add_argument("--top", type=int, default=15, help="how many of the costliest ops to list")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    flags = {"compile": True} if args.compile else {}
    sizes = (args.width, args.batch_size, args.obs_dim, args.action_dim, args.num_tasks)
    step, batch = bench_mt.make_update(*sizes, torch.device("cpu"), flags)
    for _ in range(10):  # warm-up (and compilation)
        step(batch)
    rows, last = [], None
    for _ in range(args.repeats):
        with profile(activities=[ProfilerActivity.CPU]) as last:
            for _ in range(args.updates):
                step(batch)
        rows.append(breakdown(last.events(), args.updates))
    gflop = bench_mt.update_flops(args.obs_dim, args.action_dim, args.num_tasks, args.width, args.batch_size) / 1e9
    mode = "compile" if args.compile else "eager"
    print(f"torch {torch.__version__}, {args.threads} thread(s), {mode}; width {args.width}, batch {args.batch_size}, "
          f"{gflop:.2f} GFLOP per update")  # fmt: skip
    for key in rows[0]:
        value = statistics.median(r[key] for r in rows)
        unit = "" if key in COUNTS else " ms"
        print(f"  {key:>26}: {value:8.1f}{unit} per update")
    print(last.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
