"""Training on several processes (`torchrun`): the tasks are sharded over the processes, the weights are shared.

You never need this file to learn BRC. Launched by torchrun, each process owns a contiguous shard of the tasks: their
environments, replay rings, reward-normalisation statistics and random-action RNG. Every process holds the same
networks and optimisers; an update samples each process's share of the global batch from its own tasks, and the
gradients are averaged over the processes, weighted by those shares, before each optimiser step
(`average_gradients`). The distributed update therefore equals the one-process update on the union of the batches,
and the weights stay identical on every process. Without torchrun (or with one process) nothing here does anything:
`python bro_mt.py` runs exactly as before.

  The process group ... `init` (from the torchrun environment: NCCL on CUDA, one GPU per local rank, gloo on the
                        CPU), `rank`, `world_size`
  Task shards ......... `shard_tasks` -> `TaskShard`: this process's tasks, its batch, its seed, and `gather`, which
                        joins every process's per-task results in task order
  Collectives ......... `average_gradients`, `agree` (the stop / save / progress decisions of rank 0 or any
                        process), `broadcast_object`, `gather_objects`, `broadcast_state`, `weighted_sum`
  Failures ............ `report_failure` (a failing process leaves its rank and reason in the group's store) and
                        `lost_contact` (the message of the others: that process's rank and reason, when it left them)
"""

import atexit
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

_share = 1.0  # this process's share of the global batch: its gradients' weight in average_gradients


def init(timeout_s: float, cuda: bool, cudagraphs: bool):
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT); do nothing in a plain `python` run or a one-process torchrun. NCCL with one GPU per local rank where
    CUDA is used, gloo otherwise. Collectives that get no answer for `timeout_s` seconds fail (--dist-timeout). The
    processes other than rank 0 print nothing but errors (their stdout is closed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1 or dist.is_initialized():
        return
    if cudagraphs:
        raise SystemExit(
            "--cudagraphs with torchrun: a recorded CUDA graph cannot hold the gradient all-reduce between the "
            "update's phases here; leave --cudagraphs out (--compile works with several processes)"
        )
    use_cuda = cuda and torch.cuda.is_available()
    local_rank, gpus = int(os.environ.get("LOCAL_RANK", "0")), torch.cuda.device_count()
    if use_cuda and local_rank >= gpus:
        raise SystemExit(
            f"torchrun started more processes on this machine than it has GPUs ({gpus}): NCCL needs one GPU per "
            f"process. Use --nproc-per-node {gpus}, or add --no-cuda to train on the CPU (gloo)"
        )
    if use_cuda:
        torch.cuda.set_device(local_rank)
    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout)
    atexit.register(_leave)
    if dist.get_rank() > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 prints and logs for all; errors still reach stderr


def _leave():
    """Leave the process group at exit, whatever the exit: its threads must stop before the interpreter does (else
    the process aborts, "terminate called without an active exception", after a clean run)."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a group whose peers are gone: nothing more to close
            pass


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def _device() -> torch.device:
    """Where the collectives' own small tensors live: the GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")


# ---- Task shards ----
@dataclass(frozen=True)
class TaskShard:
    """The tasks [first, stop) that this process owns, and what follows from them."""

    first: int  # global id of this process's first task
    stop: int  # one past its last
    num_tasks: int  # of the whole run
    batch_size: int  # its share of the global --batch-size, sampled from its own tasks
    global_batch_size: int
    seed: int  # its seed for torch and the random actions: --seed itself for the process that owns task 0
    rank: int = 0
    world_size: int = 1

    @property
    def tasks(self) -> slice:
        """Index the global task list with it: env_ids[shard.tasks] are this process's tasks."""
        return slice(self.first, self.stop)

    @property
    def size(self) -> int:
        return self.stop - self.first

    def gather(self, per_task):
        """Every process's per-task results, joined in task order on every process: a tuple of arrays (first axis:
        this process's tasks) or a dict by task name. In one process: `per_task` as it is."""
        if self.world_size == 1:
            return per_task
        parts = gather_objects(per_task)
        if isinstance(per_task, dict):
            return {name: value for part in parts for name, value in part.items()}
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(len(per_task)))


def shard_tasks(num_tasks: int, batch_size: int, seed: int) -> TaskShard:
    """This process's contiguous shard of `num_tasks` tasks: the first num_tasks % world processes get one task more.
    Its batch is its share of `batch_size` in proportion to its tasks (largest remainders, so that the shares add up
    to `batch_size`): every task keeps the expected share of a batch it has in one process, up to that rounding.
    Its seed comes from `seed` and its first task's id, so a process's random streams depend on its tasks only."""
    world, me = world_size(), rank()
    if world > num_tasks:
        raise SystemExit(
            f"torchrun started {world} processes for {num_tasks} task{'s' if num_tasks > 1 else ''}: each process "
            f"needs at least one task; use --nproc-per-node {num_tasks} (or fewer), or more tasks"
        )
    if world > batch_size:
        raise SystemExit(f"--batch-size {batch_size} is smaller than the {world} processes: each needs a sample")
    sizes = [num_tasks // world + (r < num_tasks % world) for r in range(world)]
    exact = [batch_size * size / num_tasks for size in sizes]
    batches = [int(b) for b in exact]
    by_remainder = sorted(range(world), key=lambda r: (-(exact[r] - batches[r]), r))
    for r in by_remainder[: batch_size - sum(batches)]:
        batches[r] += 1
    first = sum(sizes[:me])
    own_seed = seed if first == 0 else int(np.random.SeedSequence([seed, first]).generate_state(1)[0] >> 1)
    global _share
    _share = batches[me] / batch_size
    return TaskShard(first, first + sizes[me], num_tasks, batches[me], batch_size, own_seed, me, world)


# ---- Collectives ----
@torch.compiler.disable  # a graph break under --compile: the all-reduce runs eagerly between compiled pieces
def average_gradients(optimizer: torch.optim.Optimizer):
    """torchrun: replace the gradients of `optimizer`'s parameters, on every process, by their mean over the
    processes, each weighted by its share of the global batch (one all-reduce of all of them). Every loss is a mean
    over its batch, so this is the gradient of the loss on the union of the batches. One process: nothing."""
    if not is_distributed():
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads]) * _share
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        p.grad = flat[offset : offset + p.numel()].view_as(p)
        offset += p.numel()


def agree(any_of: list, rank0s: list) -> tuple[list, list]:
    """Decisions every process must take at the same step: each of `any_of` holds when it holds on any process (a
    stop request, a non-finite loss), each of `rank0s` when it holds on rank 0 (a progress line or a save due by
    rank 0's clock). One all-reduce; one process: the values as they are."""
    if not is_distributed():
        return [bool(x) for x in any_of], [bool(x) for x in rank0s]
    mine = [float(bool(x)) for x in any_of] + [float(bool(x) and rank() == 0) for x in rank0s]
    flags = torch.tensor(mine, device=_device())
    dist.all_reduce(flags)
    agreed = [bool(x > 0) for x in flags.tolist()]
    return agreed[: len(any_of)], agreed[len(any_of) :]


def broadcast_object(obj):
    """Rank 0's `obj` on every process (a run folder's name, a checkpoint's path, the outcome of a save)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj) -> list:
    """Every process's `obj`, in rank order, on every process."""
    if not is_distributed():
        return [obj]
    boxes = [None] * world_size()
    dist.all_gather_object(boxes, obj)
    return boxes


def weighted_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes of `values` weighted by each one's batch share (for the interval means of the
    update's losses, which every process computes on its own batch)."""
    if not is_distributed():
        return values
    total = values.to(_device(), torch.float64) * _share
    dist.all_reduce(total)
    return total.to(values.device, values.dtype)


def broadcast_state(objects: dict):
    """Copy rank 0's networks' parameters and buffers (and tensors such as log_alpha) to every process, so that all
    start from the same weights even though each process seeded torch with its own seed."""
    if not is_distributed():
        return
    for obj in objects.values():
        tensors = list(obj.parameters()) + list(obj.buffers()) if isinstance(obj, torch.nn.Module) else []
        tensors = [obj] if isinstance(obj, torch.Tensor) else tensors
        for tensor in tensors:
            with torch.no_grad():
                data = tensor.data.to(_device())
                dist.broadcast(data, src=0)
                tensor.data.copy_(data)


COLLECTIVE_FAILURES = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "broken pipe")


def is_collective_error(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another process died, exited or timed out (torch raises
    a DistError subclass, or a RuntimeError from gloo or NCCL naming the lost connection or the timeout). Any other
    error is this process's own and keeps its traceback."""
    if not is_distributed():
        return False
    text = str(error).lower()
    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(word in text for word in COLLECTIVE_FAILURES)
    )


FAILURE_KEY = "brc/failed/{}"  # the key under which a failing process leaves its reason in the process group's store


def report_failure(reason: str):
    """Before a process stops on an error of its own, leave the reason where the others can read it (the process
    group's key-value store, which torchrun's agent holds and which outlives this process), so that their message
    can name this rank and the cause."""
    try:
        dist.distributed_c10d._get_default_store().set(FAILURE_KEY.format(rank()), reason[:2000])
    except Exception:  # no store to reach: the others still say that contact was lost
        pass


def reported_failures() -> list:
    """(rank, reason) of every other process that reported a failure (report_failure)."""
    found = []
    try:
        store = dist.distributed_c10d._get_default_store()
        for other in range(world_size()):
            key = FAILURE_KEY.format(other)
            if other != rank() and store.check([key]):
                found.append((other, store.get(key).decode(errors="replace")))
    except Exception:
        pass
    return found


def lost_contact(error: BaseException, step: Optional[int], checkpoint: str) -> str:
    """What a process says when a collective failed: another process of the run died (SIGKILL, a crash, a simulator
    error or a refused flag there) or stopped answering for --dist-timeout seconds. It names that process's rank and
    reason when the process left them (report_failure); a process killed outright leaves none."""
    at = f" at step {step:,}" if step is not None else ""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    failures = reported_failures()
    if failures:
        cause = "; ".join(f"rank {other} stopped: {reason}" for other, reason in failures)
    else:
        cause = (
            "another process died without saying why (killed, e.g. SIGKILL or out of memory) or stopped answering "
            "within --dist-timeout; torchrun's summary names its rank"
        )
    return (
        f"rank {rank()}: lost contact with the other processes of this run{at} ({type(error).__name__}: "
        f"{first_line}). {cause}. The last checkpoint is intact: {checkpoint}"
    )


def shard_file(path: str, process: int) -> str:
    """The file of a distributed checkpoint at `path` (checkpoint_step100.pt) holding process `process`'s shard:
    checkpoint_step100.rank1.pt beside it. Rank 0's shard is in the main file."""
    stem = path[:-3] if path.endswith(".pt") else path
    return f"{stem}.rank{process}.pt"
