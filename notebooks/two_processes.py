"""Two processes, one update (notebook 05). Run by the notebook as

    torchrun --standalone --nproc-per-node 2 two_processes.py OUT_FOLDER

Three tasks, a global batch of 12 samples: process 0 owns tasks 0 and 1 and samples 8 of them, process 1 owns task 2
and samples 4 (distributed.shard_tasks decides both, as in a real run). Each runs bro_mt.update on its own rows of
the same three batches; inside update, distributed.average_gradients replaces each process's gradients by their
weighted mean. Each process saves its networks after the updates to OUT_FOLDER/rank{r}.pt. The notebook compares
them with each other and with one process that updated on all 12 samples (`train(batches())` below).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # bro_mt.py is one folder up

import bro_mt  # noqa: E402
from brc_utils import distributed  # noqa: E402

OBS, ACTIONS, TASKS, WIDTH, BATCH = 6, 2, 3, 16, 12


def batches(updates: int = 3) -> list:
    """The global batches: 12 transitions each, 4 of each task (task ids in order, so a process's rows are a block)."""
    generator = torch.Generator().manual_seed(0)
    task_ids = torch.arange(TASKS).repeat_interleave(BATCH // TASKS)
    out = []
    for _ in range(updates):
        obs, next_obs = (torch.randn(BATCH, OBS, generator=generator) for _ in range(2))
        actions = torch.rand(BATCH, ACTIONS, generator=generator) * 2 - 1
        rewards, terminations = torch.randn(BATCH, generator=generator), torch.zeros(BATCH)
        out.append(bro_mt.Batch(obs, actions, rewards, next_obs, terminations, task_ids))
    return out


def train(global_batches: list, tasks: range = range(TASKS)) -> dict:
    """Fresh networks (seed 0), then one bro_mt.update per batch on the rows of `tasks`; returns the networks'
    weights. In float64, and with the actor's noise a fixed function of each sample (so that it does not depend on
    which process drew it), one process and two agree to float rounding."""
    torch.manual_seed(0)
    args = bro_mt.Args(critic_width=WIDTH, num_bins=11)
    nets = bro_mt.make_nets(args, "embedding", OBS, ACTIONS, TASKS, WIDTH, "cpu")
    masks, target_entropy = bro_mt.action_masks_and_target_entropy([1, 2, 2], ACTIONS, "cpu")
    support = torch.linspace(-10, 10, 11)
    for batch in global_batches:
        rows = (batch.task_ids >= tasks.start) & (batch.task_ids < tasks.stop)
        local = bro_mt.Batch(*(x[rows] for x in batch))
        bro_mt.update(local, nets, masks, target_entropy, torch.ones(TASKS), support, 0.99, 0.005)
    names = ["critic", "target_critic", "actor"]
    weights = {f"{name}.{k}": v for name in names for k, v in getattr(nets, name).state_dict().items()}
    return weights | {"log_alpha": nets.log_alpha.detach()}


def fixed_noise(t: torch.Tensor) -> torch.Tensor:
    return torch.sin(7 * t.detach() + 1)


if __name__ == "__main__":
    torch.set_default_dtype(torch.float64)
    torch.randn_like = fixed_noise  # the actor's reparameterisation noise
    distributed.init(timeout_s=60, cuda=False, cudagraphs=False)  # joins the group torchrun describes
    shard = distributed.shard_tasks(TASKS, BATCH, seed=0)
    print(f"process {shard.rank}: tasks {shard.first}..{shard.stop - 1}, {shard.batch_size} of {BATCH} samples")
    weights = train(batches(), range(shard.first, shard.stop))
    torch.save(weights, os.path.join(sys.argv[1], f"rank{shard.rank}.pt"))
