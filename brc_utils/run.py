"""Run plumbing shared by bro_mt.py and bro_atari.py: everything that is not BRC.

You never need this file to learn BRC. It holds what any long training run needs (CleanRL keeps the same kind of code
in `cleanrl_utils`), so that each script reads top to bottom as the algorithm:
  Flags, device and memory . valid ranges of the flags, torch set-up, free memory, where the replay buffer lives,
                             a warning when a CPU will crawl, rendering checks and videos
  Vector envs .............. one env per task, stepped in this process or in worker processes (--async-envs)
  The run .................. `Run`: run folder and name, its lock (one process at a time), TensorBoard / wandb,
                             the progress line (steps/s, ETA), interval means of the update's metrics, the NaN
                             guard, guarded env steps, Ctrl-C / SIGTERM / SIGHUP (a repeat within a second is the
                             same request), periodic and final checkpoints that never replace another's files
  Checkpoints .............. atomic saves with a checksum and a free-space check, loads with clear errors, --resume
                             with the run's own flags (and those given on the command line), config checks, RNG
                             capture and restore, a MuJoCo simulation's full state
  Fast paths ............... --compile (torch.compile) and --cudagraphs (record once, replay) around an update
"""

import contextlib
import dataclasses
import datetime
import errno
import fcntl
import glob
import hashlib
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import typing
from dataclasses import asdict
from typing import Callable, Optional

import gymnasium as gym
import numpy as np
import torch

from brc_utils import distributed


# ---- Flags, device and memory ----
@dataclasses.dataclass(frozen=True)
class Range:
    """The valid values of a numeric flag: finite numbers from `low` to `high`, each end included unless open, and
    infinity too where `inf_ok` (e.g. --save-minutes inf: never)."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    inf_ok: bool = False

    def __contains__(self, value) -> bool:
        if self.inf_ok and value == math.inf:
            return True
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def __str__(self) -> str:
        low, high = (f"{int(x)}" if float(x).is_integer() else f"{x:g}" for x in (self.low, self.high))
        if self.high == math.inf:
            text = f"{'above' if self.low_open else 'at least'} {low}" if self.low > -math.inf else "a finite number"
            return text + (" (or inf)" if self.inf_ok else "")
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def just_outside(self) -> list:
        """Values that must be refused: just past each finite end, and not-a-number."""
        values = [math.nan]
        if self.low > -math.inf:
            values.append(self.low if self.low_open else self.low - 1)
        if self.high < math.inf:
            values.append(self.high if self.high_open else self.high + 1)
        return values


@dataclasses.dataclass
class RunArgs:
    """The flags that only run the experiment, the same in both scripts. Each script's `Args` adds its algorithm's
    flags and names its experiment; its --help lists the algorithm's flags first."""

    exp_name: str = "brc"
    """the name of this experiment (part of the run name)"""
    seed: int = 1
    """seed of the networks, the exploration, the replay sampling and the environments"""
    torch_deterministic: bool = True
    """deterministic cuDNN kernels (`torch.backends.cudnn.deterministic`)"""
    cuda: bool = True
    """train on CUDA when it is available (--no-cuda: always on the CPU)"""
    track: bool = False
    """also log to Weights and Biases (`pip install wandb`)"""
    wandb_project_name: str = "brc"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of wandb's project"""
    capture_video: bool = False
    """save a video of each task's first evaluation episode to runs/{run_name}/videos/step{N}/{task}.mp4"""
    save_every: int = 0
    """save a checkpoint every N environment steps (0: no; it is saved at the end, on Ctrl-C/SIGTERM/SIGHUP anyway)"""
    save_minutes: float = 30.0
    """also save a checkpoint every N minutes of wall time, so a crash loses at most that much (0 or inf: never)"""
    save_buffer: bool = False
    """checkpoints also hold the replay buffer, so that a resumed run continues exactly"""
    resume: Optional[str] = None
    """a checkpoint (or a run folder: its latest checkpoint) to continue from, with the run's own flags"""
    log_interval: int = 1000
    """print progress and write training losses to TensorBoard every N environment steps"""
    compile: bool = False
    """torch.compile the update (same numbers as eager up to float rounding; the first update compiles for ~1 min)"""
    cudagraphs: bool = False
    """(CUDA) record the update once as a CUDA graph and replay it: no per-kernel launch cost"""
    bf16: bool = False
    """(GPU) matmuls and convolutions in bfloat16, TF32 for the rest; LayerNorm, softmax, projection, losses float32"""
    async_envs: bool = False
    """step each task's environment in a worker process during the update (updates then lag one step behind)"""
    threads: Optional[int] = None
    """CPU threads for torch (None: automatic, 1 for small updates, else one per core or OMP_NUM_THREADS)"""
    dist_timeout: float = 1800.0
    """(torchrun) seconds a process waits for the others at a collective before it stops the run with an error"""


# Checked by check_flags together with each script's FLAG_RANGES. Seeds stop at 2**31 - 1, although NumPy and MuJoCo
# take any seed below 2**32: the scripts seed each env with seed + 10_000 + task and each evaluation with
# seed + step + 1000 * task, and those must stay below 2**32 too.
RUN_FLAG_RANGES = {
    "seed": Range(0, 2**31 - 1), "save_every": Range(0), "save_minutes": Range(0, inf_ok=True),
    "log_interval": Range(1), "threads": Range(1), "dist_timeout": Range(0, low_open=True),
}  # fmt: skip
EXP_NAME = re.compile(r"[A-Za-z0-9._+-]{1,100}")  # --exp-name: part of a folder name, never a path


def run_flag_problems(args) -> list:
    """What is wrong with the run flags that are not numbers: an empty --resume (it would silently start a new run)
    and an --exp-name that is not a plain folder name (`a/b` or `../../x` would put the run elsewhere)."""
    problems = []
    if args.resume is not None and not args.resume.strip():
        problems.append(f"--resume {args.resume!r}: an empty path; give a checkpoint or a run folder (runs/NAME)")
    if not EXP_NAME.fullmatch(args.exp_name):
        problems.append(
            f"--exp-name {args.exp_name!r}: use letters, digits and . _ - + only, at most 100 characters (it names "
            "the run folder)"
        )
    return problems


def check_flags(args, ranges: dict, problems: Optional[list] = None):
    """Refuse, before anything heavy, every flag outside its Range (`ranges`, then RUN_FLAG_RANGES; None means "the
    default" and passes), every problem the caller found between flags and those of run_flag_problems: one line
    each, naming the flag, its value and what is valid."""
    problems = list(problems or []) + run_flag_problems(args)
    for f in dataclasses.fields(args):  # a choice flag set from Python (tyro checks the command line's)
        choices, value = typing.get_args(f.type), getattr(args, f.name)
        if typing.get_origin(f.type) is typing.Literal and value not in choices:
            problems.append(f"unknown --{f.name.replace('_', '-')} {value!r}; choose one of {', '.join(choices)}")
    if hasattr(args, "v_min") and args.v_min >= args.v_max:
        problems.append(f"--v-min {args.v_min} and --v-max {args.v_max}: need v-min < v-max")
    for name, valid in (ranges | RUN_FLAG_RANGES).items():
        value = getattr(args, name)
        if value is not None and value not in valid:
            problems.append(f"{as_flag(name, value)}: must be {valid}")
    if problems:
        raise SystemExit("invalid flags:\n  " + "\n  ".join(problems))
    if getattr(args, "learning_starts", 0) >= getattr(args, "total_timesteps", math.inf):
        print(
            f"note: --learning-starts {args.learning_starts} >= --total-timesteps {args.total_timesteps}: no update will run"
        )


def load_flags(args, script: str, keys: set, check_args: Callable) -> tuple:
    """The flags to run with and, with --resume, the checkpoint (load_for_resume: a resumed run keeps its own flags,
    except those given on the command line, by RESUMABLE_CHANGES' rules); then `check_args`, the script's checks."""
    distributed.init(args.dist_timeout, args.cuda, args.cudagraphs)  # torchrun: join the other processes
    ckpt = None
    if args.resume:
        args, ckpt = load_for_resume(args, script, keys)
    check_args(args)
    return args, ckpt


def setup_torch(seed: int, cuda: bool, torch_deterministic: bool, cudagraphs: bool, bf16: bool) -> torch.device:
    """Pick the device, seed torch and set the numeric switches the flags ask for."""
    device = torch.device("cuda" if torch.cuda.is_available() and cuda else "cpu")
    if cudagraphs and device.type != "cuda":
        raise SystemExit("--cudagraphs records CUDA graphs and needs a CUDA GPU; on a CPU use --compile alone")
    torch.backends.cudnn.deterministic = torch_deterministic
    if device.type == "cpu":
        torch.set_flush_denormal(True)  # denormals slow wide CPU matmuls by up to ~9x
    if bf16 and device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(seed)
    return device


SMALL_UPDATE_GFLOP = 3.0  # below it one thread is as fast as two or faster (benchmarks/RESULTS.md, "Threads")


def set_threads(device: torch.device, threads: Optional[int], gflop_per_update: float):
    """--threads: torch's CPU thread count, set before anything runs. Automatic (None): one thread for updates under
    SMALL_UPDATE_GFLOP, where handing work to more threads costs more than it saves; else torch's default (one per
    core, or OMP_NUM_THREADS when set). Either way idle threads sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE,
    which each script sets before torch loads): threads spinning on a core that another program uses made every
    update up to ~15x slower."""
    if device.type != "cpu":
        return
    if threads is None and gflop_per_update < SMALL_UPDATE_GFLOP and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if threads and cores and threads > cores:
        print(
            f"note: --threads {threads} on {cores} CPU core{'s' if cores > 1 else ''}: threads beyond the cores take "
            f"turns on them, which is usually slower than --threads {cores}"
        )
    if threads:
        torch.set_num_threads(threads)


def available_memory(device: torch.device) -> int:
    """Free bytes on the device (CUDA) or available RAM (CPU, from /proc/meminfo where present)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def size_text(num_bytes: float) -> str:
    return gib(num_bytes) if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MiB"


def tasks_here(shard, noun: str) -> str:
    """How many tasks (or games) this process holds, for the memory lines: "7 tasks", or "4 of 7 tasks on this
    process" under torchrun (the replay buffer, its memory and a checkpoint's shard hold only those)."""
    if shard.world_size == 1:
        return f"{shard.size} {noun}"
    return f"{shard.size} of {shard.num_tasks} {noun} on this process"


def describe_shards(shard, task_names: list):
    """torchrun: print which tasks each process owns and how much of each batch it samples (every process calls it)."""
    if shard.world_size == 1:
        return
    parts = distributed.gather_objects((shard.first, shard.stop, shard.batch_size))
    print(f"torchrun: {shard.world_size} processes, each with its own tasks; the weights are shared")
    for process, (first, stop, batch) in enumerate(parts):
        names = ", ".join(task_names[first:stop])
        ids = f"tasks {first}-{stop - 1}" if stop - first > 1 else f"task {first}"
        print(f"  process {process}: {ids} ({names}), {batch} samples of each batch")


def place_replay_buffer(device, model_bytes: int, buffer_bytes: int, smaller: str, replay: str):
    """Keep the replay buffer on the training device when it fits next to the model, else in RAM; refuse up front
    (with the estimates) what fits nowhere, rather than failing hours into a run. Prints where everything lives.

    `smaller` names the flags that shrink the networks, `replay` the buffer's size."""
    free = available_memory(device)
    if model_bytes > free:
        raise SystemExit(
            f"the networks need ~{gib(model_bytes)} for weights, optimiser state and activations but {device} has "
            f"{gib(free)} free; pick a smaller {smaller}"
        )
    ram = free - model_bytes if device.type == "cpu" else available_memory(torch.device("cpu"))
    if buffer_bytes > free - model_bytes and (device.type == "cpu" or buffer_bytes > ram):
        raise SystemExit(
            f"the replay buffer {replay} needs {gib(buffer_bytes)} but only {gib(ram)} of RAM is left (next to the "
            "networks on a CPU); lower --buffer-size"
        )
    place = device if buffer_bytes <= free - model_bytes else torch.device("cpu")
    count = torch.get_num_threads()
    threads = f" ({count} thread{'s' if count > 1 else ''})" if device.type == "cpu" else ""
    print(f"device {device}{threads}; replay buffer {replay} ~{gib(buffer_bytes)} on {place}")
    return place


# ---- Vector envs ----
def make_vector_env(env_fns: list[Callable], async_envs: bool) -> gym.vector.VectorEnv:
    """One env per task, in this process or (--async-envs) each in a worker process.

    An episode that ends is reset within the step; its true final observation and info come back in
    infos["final_obs"] / infos["final_info"]. Workers inherit ignored Ctrl-C, SIGTERM and SIGHUP (a terminal sends them to
    the workers too): the main process finishes its step, saves a checkpoint and then closes them."""
    vector_env = gym.vector.AsyncVectorEnv if async_envs else gym.vector.SyncVectorEnv
    handlers = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        return vector_env(env_fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def warn_if_slow(device, gflop_per_step: float, hint: str, total_steps: Optional[int] = None):
    """Say up front when a CPU will crawl through these settings (one core reaches ~50-80 GFLOP/s in fp32 matmuls),
    and how long `total_steps` would take at best. `hint`: what to change (the scripts name only flags not already
    at their suggestion)."""
    if device.type == "cpu" and gflop_per_step > 5:
        steps_per_second = 60 * torch.get_num_threads() / gflop_per_step
        hours = (
            f" ({total_steps:,} steps: {total_steps / steps_per_second / 3600:,.0f} h or more)" if total_steps else ""
        )
        print(
            f"warning: each environment step costs ~{gflop_per_step:,.0f} GFLOP of updates, so this CPU will run at "
            f"most ~{steps_per_second:.2g} steps/s{hours}. These settings are meant for a GPU; on a CPU {hint}."
        )


@contextlib.contextmanager
def announce(what: str):
    """Print `what ...` before a long step and how long it took after it (a 64M critic takes minutes on a CPU)."""
    print(f"{what} ...", flush=True)
    start = time.time()
    yield
    print(f"{what}: done in {time.time() - start:.1f} s", flush=True)


def check_rendering(render: Callable):
    """--capture-video: fail at start-up, with what to install, where MuJoCo cannot render."""
    try:
        render(size=16)
    except Exception as error:
        raise SystemExit(
            f"--capture-video: MuJoCo cannot render here ({error}). Install EGL (Debian: libegl1) "
            "or OSMesa (libosmesa6) and set MUJOCO_GL=egl or MUJOCO_GL=osmesa."
        )


def save_videos(video_dir: str, frames: dict, fps: int):
    """One mp4 per task: `frames` maps a task's name to its list of RGB frames."""
    import imageio

    os.makedirs(video_dir, exist_ok=True)
    for name, task_frames in frames.items():
        imageio.mimsave(os.path.join(video_dir, f"{name}.mp4"), task_frames, fps=fps)


# ---- The run: folder, logging, progress, metrics, signals ----
def new_run_dir(name: str) -> str:
    """Create runs/{name} and return its name; runs started in the same second get a '+' suffix each."""
    try:
        os.makedirs("runs", exist_ok=True)
        while True:
            try:
                os.mkdir(os.path.join("runs", name))  # atomic: exactly one of two racing runs creates a folder
                return name
            except FileExistsError:
                name += "+"
    except OSError as error:
        raise SystemExit(
            f"cannot create the run folder runs/{name} in {os.getcwd()} ({error.strerror}); start the run from a "
            "folder you can write to"
        ) from None


SIGNAL_GRACE = 1.0  # seconds: a repeated signal within them is the first one delivered twice (see Run._on_signal)


def lock_run_dir(run_dir: str):
    """Lock runs/{name} for this process (its file run.lock) and return the open lock file; closing it unlocks.

    Two processes resuming one run folder at once would remove each other's checkpoints and mix their logs, so the
    second is refused, naming the first. The lock is an flock: the kernel drops it when its process ends in any way,
    a crash or SIGKILL included, so a lock file left behind never blocks a later resume. A folder this process cannot
    write to (a read-only copy, say) is refused here too, with what to do, before anything else is written."""
    path = os.path.join(run_dir, "run.lock")
    try:
        os.makedirs(run_dir, exist_ok=True)
        lock = open(path, "a+")
    except OSError as error:
        raise SystemExit(
            f"cannot write to the run folder {run_dir} ({error.strerror}); make it writable, or start from another "
            f"folder: a resumed run writes its logs and checkpoints to runs/{os.path.basename(run_dir)} under the "
            "current folder"
        ) from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "unknown"
        lock.close()
        raise SystemExit(
            f"{run_dir} is in use: process {holder} is training it, and two processes cannot continue one run folder "
            f"at once. Wait for it to end (Ctrl-C or SIGTERM to it saves a checkpoint and stops it), then resume; or, "
            f"to continue a second copy beside it, resume from another folder (it writes its own runs/"
            f"{os.path.basename(run_dir)} there)"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def remove_stale_temporaries(run_dir: str):
    """Remove the partial files that a process killed during a save left in the run folder (SIGKILL, a power cut):
    save_checkpoint's {file}.{pid}.{thread}.tmp and Run.save's checkpoint.pt.{pid}.link, of processes that are gone.
    Nothing else would ever remove them, and each can be as large as a checkpoint."""
    removed = []
    for name in os.listdir(run_dir):
        match = re.search(r"\.(\d+)\.\d+\.tmp$|\.(\d+)\.link$", name)
        if match and not process_alive(int(match.group(1) or match.group(2))):
            os.remove(os.path.join(run_dir, name))
            removed.append(name)
    if removed:
        print(f"removed {len(removed)} partial file(s) that a stopped process left in {run_dir}: {', '.join(removed)}")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True


def rate_text(steps_per_second: float) -> str:
    """A step rate as people read it: "41.3 steps/s", or "2.5 s/step" when a step takes longer than a second."""
    if steps_per_second >= 1 or steps_per_second <= 0:
        return f"{steps_per_second:,.1f} steps/s"
    return f"{1 / steps_per_second:,.1f} s/step"


class NullWriter:
    """The TensorBoard writer of a process other than rank 0 under torchrun: rank 0 writes for all."""

    def add_scalar(self, *args, **kwargs):
        pass

    def add_text(self, *args, **kwargs):
        pass

    def close(self):
        pass


class Run:
    """One training run's plumbing: its folder under runs/, the TensorBoard (and --track: wandb) writer, the progress
    line, interval means of the update's metrics, the NaN guard, checkpoints and Ctrl-C / SIGTERM / SIGHUP.

    Use as a context manager around the set-up and the training loop, and call start() when the loop starts. A signal
    during set-up stops the run at once (nothing was trained; a new run's empty folder is removed); during training it
    asks the loop to stop and save at the end of the current step. The run folder is locked from start to exit
    (lock_run_dir). On exit the signal handlers are restored, the writers closed and the lock released.
    `metric_names` name the entries of the metrics tensor that each update returns (TensorBoard tags such as
    "losses/critic_loss"). `checkpoint_bytes`, the estimated size of one checkpoint, gets the run folder's free space
    checked at once (check_checkpoint_space).
    """

    def __init__(
        self,
        script: str,
        args,
        label: str,
        metric_names: list,
        device,
        resume: Optional[dict] = None,
        checkpoint_bytes: Optional[int] = None,
    ):
        self.script, self.args, self.metric_names, self.total_steps = script, args, metric_names, args.total_timesteps
        self.device, self.resume_from = device, resume
        self.resumed = resume is not None
        self.rank, self.world_size = distributed.rank(), distributed.world_size()  # torchrun; else 0 and 1
        self.leader = self.rank == 0  # the process that owns the run folder's lock, the logs and the progress line
        if resume is not None:
            self.name = resume["run_name"]
        elif self.leader:
            utc = datetime.datetime.fromtimestamp(time.time(), datetime.timezone.utc)
            started = utc.strftime("%Y%m%d-%H%M%S")  # the UTC date and time: sorts as it reads
            self.name = new_run_dir(f"{label}__{args.exp_name}__{args.seed}__{started}")
        self.name = distributed.broadcast_object(self.name if self.leader else None)
        self.dir = os.path.join("runs", self.name)
        self.checkpoint_path = os.path.join(self.dir, "checkpoint.pt")
        self.lock = lock_run_dir(self.dir) if self.leader else None  # held till exit: one run per folder at a time
        if self.leader:
            remove_stale_temporaries(self.dir)
        if checkpoint_bytes is not None and self.leader:
            check_checkpoint_space(self.dir, checkpoint_bytes)
        from torch.utils.tensorboard import SummaryWriter

        purge_step = resume["global_step"] if resume else None
        self.writer = SummaryWriter(self.dir, purge_step=purge_step) if self.leader else NullWriter()
        self.pending_logs = []  # (tag, value, step) logged by a process other than rank 0, sent at the next line
        hyperparameters = vars(args) | {"torch_threads": torch.get_num_threads(), "processes": self.world_size}
        table = "\n".join(f"|{key}|{value}|" for key, value in hyperparameters.items())
        self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)
        if args.track and self.leader:
            import wandb

            wandb.init(
                project=args.wandb_project_name, entity=args.wandb_entity, config=hyperparameters, name=self.name,
                sync_tensorboard=True, save_code=True, id=self.name, resume="allow",
            )  # fmt: skip
        self.metrics_sum = torch.zeros(len(metric_names), device=device)  # summed over the interval's updates
        self.metrics_count = 0
        self.last_progress = (resume["global_step"] if resume else 0, time.time())  # (step, time) of the last line
        self.started = self.signalled = self.agreed_stop = False  # signalled: this process; agreed: all (torchrun)
        self.started_at, self.last_evaluation = None, None  # for the summary at the end
        self.signal_time = None  # when the first Ctrl-C / SIGTERM / SIGHUP came
        self.last_save = time.time()
        self.learning_since = None  # (step, time) where the updates started, for the ETA
        self.saved = set()  # the checkpoint_step{N}.pt file this process wrote last (it removes its older ones)
        self.saved_step = None  # the step of that checkpoint
        self.resources = []  # closed on exit
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        self.previous_handlers = {s: signal.signal(s, self._on_signal) for s in signals}

    def _on_signal(self, signum, frame):
        """Ctrl-C, SIGTERM and SIGHUP ask the loop to stop at the end of the current step, where the state is
        consistent; during set-up there is nothing to save yet, so they stop at once.

        One key press often arrives twice: under `timeout 300 python bro_mt.py` a terminal's Ctrl-C goes to both
        processes and `timeout` forwards its copy, a millisecond after the first. So a repeat within SIGNAL_GRACE
        seconds of the first signal is the same request; only a later one, after the notice was printed and the
        run visibly went on, quits at once without saving (to force-quit a save that hangs)."""
        name, now = signal.Signals(signum).name, time.time()
        if self.signal_time is not None and now - self.signal_time < SIGNAL_GRACE:
            return  # the same request, delivered twice
        if self.signal_time is not None:
            raise KeyboardInterrupt  # asked again, on purpose: quit at once, without saving
        self.signal_time = now
        if not self.started:
            raise SystemExit(f"{name} during set-up: stopped before training, nothing to save")
        self.signalled = True
        print(
            f"{name}: stopping after this step to save a checkpoint (Ctrl-C again, a second from now or later, quits "
            "without saving)",
            flush=True,
        )

    def close_on_exit(self, *resources):
        """Close each of `resources` (e.g. the vector env and its worker processes) when the run exits; returns the
        first."""
        self.resources.extend(resources)
        return resources[0]

    def video_dir(self, step: int) -> Optional[str]:
        """Where --capture-video puts the videos of the evaluation at `step` (None without the flag)."""
        return os.path.join(self.dir, "videos", f"step{step}") if self.args.capture_video else None

    @property
    def stop_requested(self) -> bool:
        """Whether Ctrl-C / SIGTERM / SIGHUP asked the run to stop: the loop checks it before each step, an evaluation
        after each episode. With torchrun a signal may reach one process only, so reading it is a collective: every
        process reads it at the same points (those two), and they agree in one small all-reduce whether any of them
        was signalled, so that all stop at the same step or episode."""
        if self.world_size > 1 and not self.agreed_stop:
            (self.agreed_stop,), _ = distributed.agree([self.signalled], [])
        return self.agreed_stop or self.signalled

    def start(self):
        """The training loop starts: signals now stop it after a step, and the progress clock starts here."""
        self.started, self.started_at = True, time.time()
        self.last_progress = (self.last_progress[0], time.time())

    def __enter__(self):
        return self

    def __exit__(self, exc_type, error, traceback):
        for resource in self.resources:
            resource.close()
        for s, handler in self.previous_handlers.items():
            signal.signal(s, handler)
        self.writer.close()
        if self.args.track and self.leader:
            import wandb

            wandb.finish()
        if self.lock is not None:
            self.lock.close()
        if not self.started and not self.resumed and self.leader:  # stopped or refused in set-up: nothing trained
            shutil.rmtree(self.dir, ignore_errors=True)
        if self.world_size > 1 and error is not None:  # say which process stopped, and why
            last = self.checkpoint_path if os.path.exists(self.checkpoint_path) else "none yet"
            if distributed.is_collective_error(error):
                raise SystemExit(distributed.lost_contact(error, getattr(self, "step", None), last)) from None
            reason = error.code if isinstance(error, SystemExit) else f"{type(error).__name__}: {error}"
            distributed.report_failure(str(reason))  # so that the others can name this rank and why
            if isinstance(error, SystemExit) and isinstance(error.code, str):
                raise SystemExit(f"rank {self.rank}: {error.code}") from None

    def log(self, scalars: dict, step: int):
        """Write scalars to TensorBoard at `step`. With torchrun, what other processes log reaches rank 0, which writes
        everything, at the next progress line or evaluation."""
        for tag, value in scalars.items():
            if self.leader:
                self.writer.add_scalar(tag, value, step)
            else:
                self.pending_logs.append((tag, float(value), step))

    def _write(self, scalars: dict, step: int):
        """Write what every process has the same of (progress, evaluation): rank 0 alone writes it."""
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def _collect_logs(self):
        """torchrun: write on rank 0 what every other process logged since the last time (all processes call it)."""
        if self.world_size == 1:
            return
        for logs in distributed.gather_objects(self.pending_logs)[1:]:
            for tag, value, step in logs:
                self.writer.add_scalar(tag, value, step)
        self.pending_logs = []

    def add_metrics(self, metrics: torch.Tensor):
        """Add one update's metrics (a tensor; no host sync)."""
        self.metrics_sum.add_(metrics)
        self.metrics_count += 1

    def has_nonfinite_loss(self) -> bool:
        """Whether an update of this interval produced a non-finite loss (one host sync per step)."""
        return bool(self.metrics_count) and not bool(torch.isfinite(self.metrics_sum).all())

    def stop_on_nonfinite_loss(self, step: int, checkpoint: Callable[[], dict]):
        """Stop the run, with its state saved (by every process, under torchrun), after a non-finite loss."""
        means = {name: value for name, value in zip(self.metric_names, self.metrics_sum.tolist())}
        means = {name: value / max(self.metrics_count, 1) for name, value in means.items()}
        path = self._save_everywhere(f"nan_step{step}", checkpoint)
        where = (
            "" if self.world_size == 1 else " on this process" if self.has_nonfinite_loss() else " on another process"
        )
        raise SystemExit(f"non-finite loss at step {step}{where} (interval means: {means}); state saved to {path}")

    def check_finite(self, step: int, checkpoint: Callable[[], dict]):
        """One process: stop the run, with its state saved, once an update produced a non-finite loss."""
        if self.has_nonfinite_loss():
            self.stop_on_nonfinite_loss(step, checkpoint)

    def progress_due(self, step: int) -> bool:
        """A progress line is due every --log-interval steps, and at least once a minute when steps are slow (unless
        the regular line is about to come)."""
        if self.learning_since is None and self.metrics_count:  # the first step with updates: the ETA's rate from here
            self.learning_since = (step, time.time())
        interval = self.args.log_interval
        slow = time.time() - self.last_progress[1] >= 60 and step % interval < 0.9 * interval  # not just before a line
        return step % interval == 0 or slow

    def progress(self, step: int, scalars: dict, summary: str):
        """Print the progress line: steps/s over the interval since the last line, and once updates run the ETA at the
        average rate since they started (evaluations included; the random-action phase before is much faster and says
        nothing about the rest), then `summary` formatted with the metrics' interval means and `scalars` (e.g.
        "critic {losses/critic_loss:.3f}"). Everything is logged to TensorBoard too."""
        now = time.time()
        elapsed = max(now - self.last_progress[1], 1e-9)
        sps = (step - self.last_progress[0]) / elapsed
        self._write({"charts/SPS": sps, "charts/updates_per_second": self.metrics_count / elapsed}, step)
        line = f"step {step:,}/{self.total_steps:,} | {rate_text(sps)}"
        if self.world_size > 1:  # every process steps its own tasks, all at this rate
            line += f" on {self.world_size} processes"
            self.metrics_sum = distributed.weighted_sum(self.metrics_sum)  # the losses on the whole global batch
            scalars = {k: v for process in distributed.gather_objects(scalars) for k, v in process.items()}
            self._collect_logs()
        if self.metrics_count:
            self.learning_since = self.learning_since or self.last_progress  # (step, time) the updates started near
            learning_sps = (step - self.learning_since[0]) / max(now - self.learning_since[1], 1e-9)
            eta = (self.total_steps - step) / max(learning_sps, 1e-9)
            line += (
                f" | ETA {eta // 3600:.0f}h{eta % 3600 // 60:02.0f}m"
                if learning_sps
                else " | ETA from the next line on"
            )
            values = dict(zip(self.metric_names, (self.metrics_sum / self.metrics_count).tolist())) | scalars
            self._write(values, step)
            line += " | " + summary.format_map(values)
            self.metrics_sum.zero_()
            self.metrics_count = 0
        else:
            line += " | no updates yet; ETA once they run"
        self.last_progress = (step, now)
        print(line, flush=True)

    def log_evaluation(self, step: int, returns: dict, summary: dict, per_task: Optional[dict] = None):
        """Log and print an evaluation: `returns` per task as eval/return/{task}, `summary` values as eval/{name}, and
        each `per_task` metric (a dict by task, e.g. human_normalized) as eval/{metric}/{task}, printed in brackets.
        With torchrun every process calls it with the gathered results of all tasks; rank 0 writes them."""
        self._collect_logs()
        self._write({f"eval/return/{task}": value for task, value in returns.items()}, step)
        self._write({f"eval/{name}": value for name, value in summary.items()}, step)
        notes = {task: "" for task in returns}
        for metric, values in (per_task or {}).items():
            self._write({f"eval/{metric}/{task}": value for task, value in values.items()}, step)
            notes |= {task: f"{notes[task]} ({value:.2f})" for task, value in values.items()}
        summary_text = " ".join(f"{name} {value:.3f}" for name, value in summary.items())
        per_task_text = " ".join(f"{task} {value:.1f}{notes[task]}" for task, value in returns.items())
        print(f"eval @ {step:,}: {summary_text} | {per_task_text}", flush=True)
        self.last_evaluation = f"@ {step:,}: {summary_text}"

    def save_due(self, step: int) -> bool:
        """A checkpoint is due every --save-every steps and every --save-minutes of wall time."""
        every_steps = self.args.save_every and step % self.args.save_every == 0
        return bool(every_steps) or (
            self.args.save_minutes and time.time() - self.last_save >= 60 * self.args.save_minutes
        )

    def save(self, step: int, checkpoint: Callable[[], dict], final: bool = False) -> bool:
        """Save checkpoint_step{N}.pt (atomically, with a checksum), point checkpoint.pt at it (a hard link: no copy)
        and say so in one line. Checkpoints that were there before this process, such as the one a resumed run
        started from, are never overwritten or removed (a step file of the same name goes beside it, with a '+');
        of its own, the process keeps only the latest. A failed save (a full disk, say) leaves the last good
        checkpoint as it was: a warning while the run goes on, an error at the end. With torchrun every process calls
        it at the same step (see _save_everywhere)."""
        start, self.last_save = time.time(), time.time()
        try:
            path = self._save_everywhere(f"checkpoint_step{step}", checkpoint)
            if self.leader:
                self._point_latest_at(path)
        except (CheckpointError, OSError) as error:
            last = self.checkpoint_path if os.path.exists(self.checkpoint_path) else "none"
            message = f"checkpoint at step {step:,} NOT saved: {error}. The last good checkpoint: {last}"
            if final:
                raise SystemExit(message)
            print(f"warning: {message}; the run goes on and tries again at the next save", flush=True)
            return False
        mine = {path if self.leader else distributed.shard_file(path, self.rank)}
        for old in self.saved - mine:
            if os.path.exists(old):
                os.remove(old)
        self.saved, self.saved_step = mine, step
        size = os.path.getsize(path) / 2**20
        shards = f" and {self.world_size - 1} process shard(s) beside it" if self.world_size > 1 else ""
        print(
            f"checkpoint saved at step {step:,}: {self.checkpoint_path} ({size:,.1f} MiB{shards}, "
            f"{time.time() - start:.1f} s)"
        )
        return True

    def _save_everywhere(self, stem: str, checkpoint: Callable[[], dict]) -> str:
        """Write runs/{name}/{stem}.pt (or {stem}+.pt, see _path_to_write) and return its path. One process: the whole
        state in it. torchrun: every process calls this at the same step; each process but rank 0 writes its shard
        (its envs, replay, normaliser, RNGs and loop variables) to {stem}.rank{r}.pt; once all are written, rank 0
        writes the main file: the shared weights and optimisers once, its own shard, and each shard file's name and
        checksum. The main file commits the checkpoint: a save cut short leaves the previous one whole."""
        path = distributed.broadcast_object(self._path_to_write(stem) if self.leader else None)
        state = checkpoint()
        if self.world_size == 1:
            save_checkpoint(path, state)
            return path
        shard, outcome = None, None
        try:
            if not self.leader:
                own = {key: state[key] for key in self.process_keys}
                shard_path = distributed.shard_file(path, self.rank)
                shard = (os.path.basename(shard_path), save_checkpoint(shard_path, own | {"rank": self.rank}))
        except (CheckpointError, OSError) as error:
            outcome = f"rank {self.rank}: {error}"
        shards = distributed.gather_objects(outcome or shard)
        if self.leader:
            failed = [s for s in shards[1:] if isinstance(s, str)]
            try:
                if failed:
                    raise CheckpointError("; ".join(failed))
                state |= {"world_size": self.world_size, "shards": [{"file": f, "checksum": c} for f, c in shards[1:]]}
                save_checkpoint(path, state)
            except (CheckpointError, OSError) as error:
                outcome = str(error)
        outcome = distributed.broadcast_object(outcome if self.leader else None)
        if outcome is not None:
            raise CheckpointError(outcome)
        return path

    def _point_latest_at(self, path: str):
        """Make checkpoint.pt the checkpoint at `path`: a hard link (no second copy on the disk), or a copy where the
        filesystem has no hard links (some network and FUSE mounts). Either is made under a temporary name and
        renamed over checkpoint.pt, so that checkpoint.pt is always a whole checkpoint."""
        tmp = f"{self.checkpoint_path}.{os.getpid()}.link"
        try:
            try:
                os.link(path, tmp)
            except OSError:
                shutil.copyfile(path, tmp)
            os.replace(tmp, self.checkpoint_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    def finish(self, step: int, checkpoint: Optional[Callable[[], dict]] = None) -> str:
        """Save the final (or the stopped run's) checkpoint, unless a periodic save at this very step holds it
        already, and say how to continue; returns its path. `checkpoint` defaults to what restore_or_start named."""
        self._collect_logs()
        if step != self.saved_step:
            self.save(step, checkpoint or self.checkpoint, final=True)
        if self.agreed_stop or self.signalled:  # (what the loop's last check saw; no collective here)
            print(f"stopped at step {step:,}; continue with: {self.command()} --resume {self.checkpoint_path}")
        else:
            print(f"done: {step:,} steps")
        self._print_summary(step)
        return self.checkpoint_path

    def command(self) -> str:
        """How this run was launched: `python bro_mt.py`, or torchrun with the same number of processes (a resume
        needs the same number)."""
        if self.world_size == 1:
            return f"python {self.script}"
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.world_size))
        if per_node == self.world_size:
            return f"torchrun --standalone --nproc-per-node {per_node} {self.script}"
        nodes = self.world_size // per_node
        return f"torchrun --nnodes {nodes} --nproc-per-node {per_node} --rdzv-backend c10d --rdzv-endpoint HOST:PORT {self.script}"

    def _print_summary(self, step: int):
        """The end of a run in a few lines: the last evaluation, the wall time, where everything is, what to run next."""
        minutes = (time.time() - self.started_at) / 60 if self.started_at else 0.0
        size = os.path.getsize(self.checkpoint_path) / 2**20 if os.path.exists(self.checkpoint_path) else 0.0
        lines = [f"summary of {self.name}: {step:,} steps, {minutes:.1f} min of training in this process"]
        if self.last_evaluation:
            lines.append(f"  last evaluation {self.last_evaluation}")
        lines.append(f"  run folder:  {self.dir}/  (TensorBoard: tensorboard --logdir {os.path.dirname(self.dir)})")
        lines.append(f"  checkpoint:  {self.checkpoint_path} ({size:,.1f} MiB)")
        if self.args.capture_video:
            lines.append(f"  videos:      {os.path.join(self.dir, 'videos')}/")
        more = "" if self.agreed_stop or self.signalled else f" --total-timesteps {2 * self.total_steps}"
        lines.append(f"  continue:    {self.command()} --resume {self.dir}{more}")
        print("\n".join(lines), flush=True)

    def guard_envs(self, step: int, tasks: list, checkpoint: Callable[[], dict], env_step: Callable, *args):
        """Call the vector env's `env_step(*args)`. When a simulator fails (e.g. dm_control's PhysicsError) or returns
        a non-finite observation or reward, stop the run naming the task and step, with what can be saved saved."""
        try:
            result = env_step(*args)
        except Exception as error:
            raise SystemExit(
                f"an environment failed at step {step:,} ({type(error).__name__}: {error}); {self._save_for_inspection(step, checkpoint, 'env_error')}"
            ) from None
        observations, rewards = result[0], result[1]
        bad = [
            task
            for task, obs, reward in zip(tasks, observations, rewards)
            if not (np.isfinite(obs).all() and np.isfinite(reward))
        ]
        if bad:
            raise SystemExit(
                f"non-finite observation or reward from {', '.join(bad)} at step {step:,}; {self._save_for_inspection(step, checkpoint, 'nan_env')}"
            )
        return result

    def _path_to_write(self, stem: str) -> str:
        """runs/{name}/{stem}.pt, unless a file of that name is there that this process did not write: then
        {stem}+.pt ({stem}++.pt, ...), as run folders do. A process never replaces a file it did not write; such a file
        is there when a run resumed from an older checkpoint reaches a step that its first continuation saved."""
        while True:
            path = os.path.join(self.dir, f"{stem}.pt")
            if path in self.saved or not os.path.exists(path):
                return path
            stem += "+"

    def _save_for_inspection(self, step: int, checkpoint: Callable[[], dict], kind: str) -> str:
        """Save this process's whole state (with torchrun, without waiting for the others: {kind}_step{N}.rank{r}.pt)."""
        path = self._path_to_write(f"{kind}_step{step}" + (f".rank{self.rank}" if self.world_size > 1 else ""))
        try:
            save_checkpoint(path, checkpoint())
            return f"state saved to {path} for inspection (the last regular checkpoint: {self.checkpoint_path})"
        except Exception as error:
            return f"the state could not be saved ({error}); the last regular checkpoint: {self.checkpoint_path}"

    # -- The training loop's plumbing: one call per phase, so that each script's loop reads as the algorithm --
    def restore_or_start(self, shared: dict, own: dict, loop, rng, envs, replay_buffer, config: dict) -> int:
        """Name what every checkpoint holds and, on --resume, load it back now; then start the loop's clock.

        `shared`: what every process holds the same (networks, optimisers, the temperature), saved through their
        state_dict or as tensors; `own`: this process's objects with a state_dict (the reward normaliser); `loop`: the
        dataclass of the loop's own variables (step, observations, running returns), saved field by field; `rng`:
        the NumPy generator of the loop; `envs`: the vector env, whose simulators' states are saved;
        `replay_buffer`: saved with --save-buffer; `config`: what a resume must match. With torchrun, `own`, `loop`,
        `rng`, `envs` and `replay_buffer` are this process's shard (see _save_everywhere), and rank 0's `shared`
        weights are copied to every process. Returns the step of the first update: --learning-starts, or later on
        a resume whose checkpoint holds no replay buffer (the buffer refills first)."""
        save_buffer, stateful = self.args.save_buffer, shared | own
        loop_fields = [f.name for f in dataclasses.fields(loop)]
        self.process_keys = {*own, *loop_fields, "rng", "envs", "replay_buffer"} - {"global_step"}

        def checkpoint() -> dict:
            fields = {name: getattr(loop, name) for name in loop_fields}
            buffer = replay_buffer.state_dict() if save_buffer else None
            envs_state = list(envs.get_attr("state"))
            return checkpoint_state(
                self,
                config,
                loop.global_step,
                stateful,
                rng,
                self.device,
                envs=envs_state,
                replay_buffer=buffer,
                **fields,
            )

        self.checkpoint = checkpoint
        first_update_step = self.args.learning_starts
        if self.resume_from is not None:
            ckpt = self.resume_from
            restore_state(ckpt, stateful, rng, self.device, envs)
            for name in loop_fields:
                value = ckpt[name]
                setattr(loop, name, value.numpy().copy() if isinstance(value, torch.Tensor) else value)
            first_update_step = restore_replay(ckpt, replay_buffer, self.args.learning_starts)
        distributed.broadcast_state(shared)
        self.start()
        return first_update_step

    def step_envs_guarded(self, envs, actions, step: int, tasks: list, while_stepping: Optional[Callable] = None):
        """Step every task's env once with `actions` and return (obs, rewards, terminations, truncations, infos).

        With `while_stepping` (--async-envs), the actions go to the worker processes, `while_stepping()` (the update)
        runs here while they simulate, and then the results are collected. A simulator error or a non-finite
        observation or reward stops the run, naming the task, with the state saved for inspection (guard_envs)."""
        self.step = step
        if while_stepping is None:
            return self.guard_envs(step, tasks, self.checkpoint, envs.step, actions)
        envs.step_async(actions)
        while_stepping()
        return self.guard_envs(step, tasks, self.checkpoint, envs.step_wait)

    def end_of_step(self, step: int, progress_scalars: Callable[[], dict], summary: str):
        """After each step: stop the run, saved, if an update produced a non-finite loss; print the progress line when
        it is due (with `progress_scalars()` and `summary`, see progress); save a checkpoint when one is due.

        With torchrun the processes take these decisions together, in one small all-reduce per step, never by their
        own clocks: a non-finite loss (on any process) counts everywhere, a progress line and a timed save come when
        rank 0's clock says so. So all print, save or stop at one step (a signal: see stop_requested)."""
        self.step = step
        if self.world_size == 1:
            self.check_finite(step, self.checkpoint)
            progress, save = self.progress_due(step), self.save_due(step)
        else:
            (nonfinite,), (progress, save) = distributed.agree(
                [self.has_nonfinite_loss()], [self.progress_due(step), self.save_due(step)]
            )
            if nonfinite:
                self.stop_on_nonfinite_loss(step, self.checkpoint)
        if progress:
            self.progress(step, progress_scalars(), summary)
        if save:
            self.save(step, self.checkpoint)


# ---- Checkpoints ----
class CheckpointError(Exception):
    """A checkpoint could not be written; the message says why (e.g. the disk is full) and nothing half-written is left."""


def content_checksum(state) -> str:
    """SHA-256 of everything a checkpoint holds (tensor bytes, shapes, dtypes and every other value, in a fixed
    order), so that a file damaged after it was written is recognised when it is loaded."""
    digest = hashlib.sha256()

    def visit(value):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{tensor.dtype}{tuple(value.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(repr(key).encode())
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                visit(item)
        else:
            digest.update(repr(value).encode())

    visit(state)
    return digest.hexdigest()


def tensor_bytes(state) -> int:
    """Bytes of the tensors in `state`: about the size of its checkpoint file."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    values = state.values() if isinstance(state, dict) else state if isinstance(state, (list, tuple)) else []
    return sum(tensor_bytes(value) for value in values)


def save_checkpoint(path: str, state: dict) -> str:
    """Write `state` and its content checksum (returned) atomically: first to a temporary file of this process, then
    renamed over `path`. Checks the free space first; on any failure the temporary file is removed, the previous checkpoint
    at `path` is left as it was, and CheckpointError says why."""
    folder = os.path.dirname(path) or "."
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"  # two savers of one path never share a file
    try:
        os.makedirs(folder, exist_ok=True)
        needed, free = int(1.05 * tensor_bytes(state)) + 2**20, shutil.disk_usage(folder).free
        if needed > free:
            raise CheckpointError(
                f"no space left on device: the checkpoint needs ~{size_text(needed)}, {size_text(free)} free in {folder}"
            )
        checksum = content_checksum(state)
        torch.save({**state, "checksum": checksum}, tmp)
        os.replace(tmp, path)
        return checksum
    except OSError as error:
        reason = "no space left on device" if error.errno == errno.ENOSPC else error.strerror or str(error)
        raise CheckpointError(f"{reason} while writing {path}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_checkpoint_space(run_dir: str, checkpoint_bytes: int) -> bool:
    """At start-up, warn when the disk of the run folder cannot hold this run's checkpoints (`checkpoint_bytes`, the
    estimated size of one: weights, optimiser moments and, with --save-buffer, the replay buffer). Without this a full
    disk shows only at the first save, perhaps hours in, with no earlier checkpoint to fall back on. A save writes the
    new checkpoint before it removes the previous one, so two must fit. Returns whether they do."""
    one = int(1.05 * checkpoint_bytes) + 2**20  # as save_checkpoint's own check
    free = shutil.disk_usage(run_dir).free
    if free >= 2 * one:
        return True
    if free < one:
        problem = "no checkpoint will fit: every save, the final one included, will fail"
    else:
        problem = "one fits, but a save writes the new checkpoint before it removes the previous one: the second fails"
    print(
        f"warning: a checkpoint of this run takes ~{size_text(one)}, and {size_text(free)} is free in {run_dir}: "
        f"{problem}. Free some space (or leave out --save-buffer), or start from a folder on a larger disk.",
        flush=True,
    )
    return False


def load_checkpoint(path: str, script: str, keys: set, flag: str = "--resume") -> dict:
    """Load a checkpoint of `script` (it must hold `keys`, and match its checksum), or stop with a message that says
    what is wrong with it. A folder means the run's latest checkpoint, its checkpoint.pt, or, where that is gone,
    the newest of its checkpoint_step*.pt files that loads."""
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, "checkpoint.pt")):
        return newest_step_checkpoint(path, script, keys, flag)
    if os.path.isdir(path):
        path = os.path.join(path, "checkpoint.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"{flag} {path}: no such file")
    except Exception as error:
        raise SystemExit(
            f"{flag} {path}: not a readable {script} checkpoint ({type(error).__name__}: {error}). "
            "It may be truncated or corrupt; use another checkpoint or start a new run."
        )
    missing = keys - set(ckpt) if isinstance(ckpt, dict) else keys
    if missing:
        raise SystemExit(f"{flag} {path}: not a {script} checkpoint (missing {sorted(missing)})")
    checksum = ckpt.pop("checksum", None)  # checkpoints written before checksums have none
    if checksum is None:
        print(f"warning: {flag} {path} has no checksum (it was written before checkpoints had one): not verified")
    elif checksum != content_checksum(ckpt):
        raise SystemExit(
            f"{flag} {path}: the checkpoint's content does not match its checksum: the file was damaged after it "
            "was written (disk or copy error); use another checkpoint"
        )
    ckpt["path"] = path
    return ckpt


def newest_step_checkpoint(folder: str, script: str, keys: set, flag: str) -> dict:
    """A run folder without checkpoint.pt (deleted, or lost with a copy that does not keep hard links): load the
    checkpoint_step*.pt written last that loads and matches its checksum, and say which one it took and why."""
    candidates = glob.glob(os.path.join(glob.escape(folder), "checkpoint_step*.pt"))
    candidates = sorted((c for c in candidates if not re.search(r"\.rank\d+\.pt$", c)), key=os.path.getmtime)
    refused = []
    for path in reversed(candidates):
        try:
            ckpt = load_checkpoint(path, script, keys, flag)
        except SystemExit as error:
            refused.append(f"{os.path.basename(path)} ({error})")
            continue
        skipped = f"; newer but refused: {'; '.join(refused)}" if refused else ""
        print(f"{flag} {folder}: it has no checkpoint.pt; continuing from its newest checkpoint, {path}{skipped}")
        return ckpt
    found = f": {'; '.join(refused)}" if refused else ""
    raise SystemExit(f"{flag} {folder}: no checkpoint.pt and no usable checkpoint_step*.pt in this folder{found}")


def check_config(path: str, saved: dict, config: dict, flag: str = "--resume"):
    """Refuse a checkpoint made for other tasks, sizes or switches than this run's `config`."""
    for key in config:
        if saved.get(key) != config[key]:
            raise SystemExit(
                f"{flag} {path}: the checkpoint's {key} is {saved.get(key)} but this run's is {config[key]}; "
                "pass the flags it was trained with (see its 'args')"
            )


def checkpoint_state(run: Run, config: dict, step: int, stateful: dict, rng, device, **extra) -> dict:
    """Everything needed to continue exactly: the state_dict of each object in `stateful` (a tensor is copied),
    every random number generator, and `extra` (numpy arrays become tensors)."""
    state = {"version": 1, "run_name": run.name, "config": config, "args": asdict(run.args), "global_step": step}
    state["torch_threads"] = torch.get_num_threads()  # CPU results are bit-reproducible only at the same count
    for name, obj in stateful.items():
        state[name] = obj.detach().cpu().clone() if isinstance(obj, torch.Tensor) else obj.state_dict()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    state["rng"] = {"torch": torch.get_rng_state(), "numpy": rng.bit_generator.state, "cuda": cuda_rng}
    for name, value in extra.items():
        state[name] = torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) else value
    return state


# Flags a resumed run may change: how long it goes on, how it logs, saves and evaluates, and how fast it computes.
# Every other flag changes what the saved state means, so a resumed run takes it from the checkpoint.
RESUMABLE_CHANGES = {
    "total_timesteps", "resume", "save_every", "save_minutes", "save_buffer", "log_interval", "eval_interval", "eval_episodes",
    "eval_epsilon", "capture_video", "track", "wandb_project_name", "wandb_entity", "exp_name", "cuda",
    "torch_deterministic", "compile", "cudagraphs", "bf16", "async_envs", "threads", "dist_timeout",
}  # fmt: skip


def as_flag(name: str, value) -> str:
    """How a field's value is written on the command line: --env-ids dog-run dog-walk, --no-reward-norm, --seed 3."""
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {' '.join(map(str, value)) if isinstance(value, (list, tuple)) else value}"


def flags_on_command_line(args, script: str) -> set:
    """The fields of `args` named on the command line of this process (tyro's spellings: --flag-name, --flag_name,
    --flag=value, --no-flag), when it runs `script`.py; none when main() is called from Python (tests, notebooks),
    where sys.argv is another program's."""
    if os.path.basename(sys.argv[0]) != f"{script}.py":
        return set()
    fields, given = {field.name for field in dataclasses.fields(args)}, set()
    for word in sys.argv[1:]:
        name = word[2:].split("=", 1)[0].replace("-", "_") if word.startswith("--") else ""
        name = name[3:] if name not in fields and name.startswith("no_") else name
        if name in fields:
            given.add(name)
    return given


def load_for_resume(args, script: str, keys: set):
    """--resume PATH: load the checkpoint before anything heavy and continue with the run's own flags. A flag that
    was not given (not on the command line, and at its default) takes the checkpoint's value; a flag given with
    another value than the checkpoint's, even its default (`--gamma 0.99` on a run trained with 0.9), is refused
    unless it is one of RESUMABLE_CHANGES, which then take the given value. Returns (the flags to run with, the
    checkpoint)."""
    ckpt = load_process_shard(load_checkpoint(args.resume, script, keys), script)
    defaults, saved, step = type(args)(), ckpt.get("args"), ckpt.get("global_step")
    if not isinstance(saved, dict):
        raise SystemExit(
            f"--resume {ckpt['path']}: the checkpoint holds no 'args', the flags of its run, so it cannot continue with "
            "them; resume a checkpoint that a training run saved"
        )
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SystemExit(
            f"--resume {ckpt['path']}: its global_step {step!r} is not a step count; use another checkpoint"
        )
    restored, conflicts, given = {}, [], flags_on_command_line(args, script)
    for name, value in vars(args).items():
        if name not in saved or name == "resume" or value == saved[name]:
            continue
        if name not in given and value == getattr(defaults, name):
            restored[name] = saved[name]
        elif name not in RESUMABLE_CHANGES:
            conflicts.append(f"{as_flag(name, value)} (the checkpoint's run used {as_flag(name, saved[name])})")
    if conflicts:
        raise SystemExit(
            f"--resume {args.resume}: these flags change what the saved state means and differ from the "
            f"checkpoint's: {'; '.join(conflicts)}. Leave them out to continue with the checkpoint's values."
        )
    if restored:
        print("flags from the checkpoint: " + " ".join(as_flag(name, value) for name, value in restored.items()))
    return dataclasses.replace(args, **restored), ckpt


def load_process_shard(ckpt: dict, script: str) -> dict:
    """A checkpoint of a torchrun run holds the shared state and rank 0's shard; each other process adds its own shard
    from the file beside it (checked against the checksum the main file lists). The number of processes must be the
    one that saved it: the shards hold each process's tasks' envs, replay and statistics."""
    saved_world, world = ckpt.get("world_size", 1), distributed.world_size()
    if saved_world != world:
        launch = "`python` (one process)" if saved_world == 1 else f"torchrun --nproc-per-node {saved_world} (in all)"
        raise SystemExit(
            f"--resume {ckpt['path']}: the run was trained by {saved_world} process(es) and this one has {world}; its "
            f"tasks' envs, replay and statistics are split that way, so continue it with {launch}"
        )
    if distributed.rank() == 0:
        return ckpt
    entry = ckpt["shards"][distributed.rank() - 1]
    path = os.path.join(os.path.dirname(ckpt["path"]), entry["file"])
    shard = load_checkpoint(path, script, {"rank"})  # (its content matches its own checksum)
    shard.pop("path")
    if content_checksum(shard) != entry["checksum"]:
        raise SystemExit(f"--resume {ckpt['path']}: {path} is not the shard this checkpoint was saved with")
    return ckpt | shard


def restore_replay(ckpt: dict, replay_buffer, learning_starts: int) -> int:
    """Restore the replay buffer if the checkpoint holds one (--save-buffer). Returns the step at which updates
    (re)start: at once, or after `learning_starts` more steps that refill an empty buffer."""
    if ckpt["replay_buffer"] is not None:
        replay_buffer.load_state_dict(ckpt["replay_buffer"])
        return learning_starts
    print(
        f"the checkpoint holds no replay buffer: collecting {learning_starts} steps with the current policy before "
        "updates restart (save with --save-buffer to continue exactly)"
    )
    return ckpt["global_step"] + learning_starts


def restore_state(ckpt: dict, stateful: dict, rng, device, envs=None):
    """Load what checkpoint_state saved of `stateful`, the random number generators and the training envs' state."""
    for name, obj in stateful.items():
        if isinstance(obj, torch.Tensor):
            with torch.no_grad():
                obj.copy_(ckpt[name])
        else:
            obj.load_state_dict(ckpt[name])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    rng.bit_generator.state = ckpt["rng"]["numpy"]
    if envs is not None:
        envs.set_attr("state", ckpt["envs"])
    print(f"resumed {ckpt['run_name']} at step {ckpt['global_step']:,}")
    saved_threads, threads = ckpt.get("torch_threads"), torch.get_num_threads()
    if device.type == "cpu" and saved_threads is not None and saved_threads != threads:
        print(
            f"warning: the checkpoint's run used {saved_threads} CPU thread{'s' if saved_threads > 1 else ''} and this "
            f"one uses {threads}: CPU sums come out bit-identical only with the same count, so this run will not be "
            f"bit-exact to one that never stopped (--threads {saved_threads} makes it so)"
        )


# ---- Fast paths (opt-in; each script's eager `update` is the reference) ----
def fast_update(update_step: Callable, compile: bool, cudagraphs: bool) -> Callable:
    """`update_step(batch) -> metrics`, compiled by torch.compile (--compile) and/or replayed as a CUDA graph
    (--cudagraphs). Both run exactly the script's code; tests/test_*_fast.py check that they give the same numbers."""
    if compile:
        torch._inductor.config.fallback_random = True  # eager's random numbers: --compile changes only rounding
        update_step = torch.compile(update_step)
    return CUDAGraphUpdate(update_step) if cudagraphs else update_step


class CUDAGraphUpdate:
    """Record one update's kernels as a CUDA graph, then replay the whole update with a single launch.

    A graph replays fixed memory addresses, so: each batch is copied into the graph's own input tensors, the
    optimisers keep their step counts on the GPU (`capturable=True`), and every other tensor the update reads (such as
    bro_mt's reward scale) is changed in place, never reassigned. CUDA wants a few ordinary runs on a side stream
    before recording; those `warmup` updates are real updates of the run.
    """

    def __init__(self, update_step: Callable, warmup: int = 3):
        self.update_step, self.warmup, self.graph = update_step, warmup, None

    def __call__(self, batch) -> torch.Tensor:
        if self.graph is None and self.warmup > 0:
            self.warmup -= 1
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                metrics = self.update_step(batch)
            torch.cuda.current_stream().wait_stream(stream)
            return metrics
        if self.graph is None:  # record (nothing runs while recording; the replay below does this update)
            self.batch = type(batch)(*(x.clone() for x in batch))
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.metrics = self.update_step(self.batch)
        for static, x in zip(self.batch, batch):
            static.copy_(x)
        self.graph.replay()
        return self.metrics.clone()
