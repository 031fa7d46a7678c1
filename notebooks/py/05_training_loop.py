# %% [markdown]
# # 5. The training loop
#
# Notebooks 1-4 took BRC apart; `main(args)` in `bro_mt.py` puts it back together in one flat loop. Here we run it
# for real, on two tasks, inside the notebook (about a minute on a CPU), and plot per-task learning curves from the
# TensorBoard logs it writes. One iteration of the loop, as marked in the code (the loop itself is printed below):
#
# | phase | what happens | where |
# |---|---|---|
# | act | random actions for `learning_starts` steps; then $a_i \sim \pi(\cdot \mid s_i, \mathrm{sg}(e_i))$ for all tasks in one batch | `Actor.sample`, `Critic.embed` |
# | step envs | every task's env takes one step with the first $\lvert\mathcal A_i\rvert$ action dims; observations are zero-padded | `DMCEnv` (in `brc_utils/envs.py`) |
# | record | `RewardNormalizer.record`; at an episode's end `end_episode` and the return is logged | notebook 4 |
# | store | one transition per task into rings shaped `[tasks, capacity, dim]` (raw rewards) | `ReplayBuffer.add` |
# | update | `updates_per_step` × `update()`: critic → Polyak target → actor → temperature, on a batch drawn uniformly over (task, index) | `update`, `critic_loss`, `actor_loss`, `temperature_loss` |
# | log, save | losses every `log_interval`; the progress line; a checkpoint now and then and at the end | `Run.end_of_step`, `Run.finish` (in `brc_utils/run.py`) |
# | evaluate | deterministic episodes of every task every `eval_interval` steps | `evaluate`, `Run.log_evaluation` |
#
# One "environment step" steps every task once, so 1 000 steps on two tasks collect 2 000 transitions.

# %%
import os
import sys

# Import the real scripts from the repository root, whether Jupyter runs in notebooks/ or in the root.
ROOT = os.path.abspath(".." if os.path.exists(os.path.join("..", "bro_mt.py")) else ".")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))  # exercises.py

import dataclasses
import inspect
import re
import shutil
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bro_mt import Args, main
from exercises import answer_or_solution

torch.set_num_threads(1)  # small networks: one thread is as fast and leaves the other cores free
plt.rcParams.update(
    {"figure.dpi": 72, "figure.figsize": (10, 3), "axes.grid": True, "grid.alpha": 0.3, "font.size": 12}
)
NOTEBOOK_DIR = os.getcwd()

# %% [markdown]
# ## The loop itself
#
# Printed from today's `bro_mt.py` with `inspect`, from the `while` line to the end of `main`, so it is always the code
# that runs. Lines marked `run >` call the run plumbing (the `run` object from `brc_utils/run.py`: the guarded env
# step, logging, checkpoints, videos); each call's name says what it does, and a student may read past them.
# Everything else is BRC.

# %%
lines = inspect.getsource(main).splitlines()
start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("while "))
indent = len(lines[start]) - len(lines[start].lstrip())
calls_plumbing = re.compile(r"\brun(_utils)?\.")  # run.log(...), run_utils.fast_update(...)
for line in lines[start:]:
    print("run >" if calls_plumbing.search(line) else "     ", line[indent:])

# %% [markdown]
# ## A run small enough for a CPU
#
# `DMC_TINY` is `cartpole-balance` (observation 5, one action) and `point_mass-easy` (observation 4, two actions), so
# the run also exercises the padding and action masking. Everything else is the paper's algorithm; only the sizes
# shrink. The cell prints every setting that differs from the paper's defaults in `Args`.

# %%
args = Args(
    env_ids=["DMC_TINY"],
    critic_width=32,
    batch_size=64,
    total_timesteps=1200,
    learning_starts=200,
    buffer_size=2000,
    max_episode_steps=100,
    eval_interval=200,
    eval_episodes=2,
    log_interval=200,
)
defaults = Args()
unset = {
    "critic_width": "the --model-size preset, 64M: 4096",
    "batch_size": "1024 with several tasks",
    "max_episode_steps": "dm_control's 1000",
}  # what a default of None means
for f in dataclasses.fields(Args):
    if getattr(args, f.name) != getattr(defaults, f.name):
        paper = getattr(defaults, f.name)
        print(
            f"{f.name:>18}: {str(getattr(args, f.name)):>14}   (paper: {unset.get(f.name, paper) if paper is None else paper})"
        )

# %% [markdown]
# Why these: a width-32 critic and batch 64 make an update take milliseconds on a CPU (the paper's width 4096 and
# batch 1024 need a GPU); 100-step episodes give many episodes (and learning-curve points) in 1 200 steps; 200 random
# steps instead of 5 000 leave 1 000 steps of learning with `updates_per_step = 2` (2 000 updates).
# `main` writes `runs/{run_name}/` relative to the working directory, so we run it in a temporary directory.

# %%
run_dir = tempfile.mkdtemp(prefix="brc_notebook5_")
os.chdir(run_dir)
try:
    checkpoint_path = main(args)
finally:
    os.chdir(NOTEBOOK_DIR)
log_dir = os.path.join(run_dir, os.path.dirname(checkpoint_path))

# %% [markdown]
# ## Learning curves from the logs
#
# `main` logs with TensorBoard (`tensorboard --logdir runs` in a terminal shows the same). Here we read the event file
# back with TensorBoard's `EventAccumulator`. Per task: `charts/episodic_return/{task}` is the return of every finished
# training episode (stochastic policy, random actions before step 200); `eval/return/{task}` is the mean of the
# deterministic evaluation episodes (tanh of the mean action).

# %%
events = EventAccumulator(log_dir, size_guidance={"scalars": 0})
events.Reload()
logs = {tag: np.array([(e.step, e.value) for e in events.Scalars(tag)]) for tag in events.Tags()["scalars"]}
print(sorted(logs))
tasks = sorted(tag.split("/")[-1] for tag in logs if tag.startswith("eval/return/"))

fig, axes = plt.subplots(1, len(tasks), figsize=(11, 3))
for ax, task in zip(axes, tasks):
    train, evaluation = logs[f"charts/episodic_return/{task}"], logs[f"eval/return/{task}"]
    ax.plot(train[:, 0], train[:, 1], ".-", alpha=0.6, label="training episodes")
    ax.plot(evaluation[:, 0], evaluation[:, 1], "o-", label="evaluation (deterministic)")
    ax.axvline(args.learning_starts, color="gray", ls=":", label="learning starts")
    ax.set_title(task)
    ax.set_xlabel("environment step")
axes[0].set_ylabel(f"return ({args.max_episode_steps}-step episodes)")
axes[0].legend()
plt.show()

# %% [markdown]
# `cartpole-balance` improves within a few hundred updates: the pole starts upright and the critic quickly learns which
# pushes keep it there. `point_mass-easy` pays only near its target, and random actions in 100-step episodes rarely
# get there: its curve stays flat in a run this short (it needs a much longer run; see the command at the end). Both share one critic and one actor throughout.
#
# ## Inside the update
#
# The losses and the per-task reward scales, logged every `log_interval` steps (means over the updates since the
# last log line).

# %%
panels = [
    ("losses/critic_loss", "critic cross-entropy (2 members)"),
    ("charts/alpha", "temperature α"),
    ("charts/q_mean", "mean Q (normalised units)"),
    ("charts/entropy", "policy entropy −log π"),
]
fig, axes = plt.subplots(1, 5, figsize=(16, 2.8))
for ax, (tag, title) in zip(axes, panels):
    ax.plot(logs[tag][:, 0], logs[tag][:, 1], "o-")
    ax.set_title(title, fontsize=12)
    ax.set_xlabel("step")
for task in tasks:
    scale = logs[f"charts/reward_scale/{task}"]
    axes[-1].plot(scale[:, 0], scale[:, 1], "o-", label=task)
axes[-1].set_title("reward divisor per task", fontsize=12)
axes[-1].set_yscale("log")
axes[-1].legend(fontsize=10)
axes[-1].set_xlabel("step")
plt.tight_layout()
plt.show()

# %% [markdown]
# How to read them:
#
# - **Critic loss** is a cross-entropy against a target distribution that is itself spread out, so it never reaches 0;
#   a critic that knows nothing scores about $2\log 101 \approx 9.2$ (two members). It falls slowly as the critic
#   sharpens.
# - **α** falls from 0.1 while the policy's entropy is above its target $-|\mathcal A_i|/2$ (`temperature_loss`).
# - **Q** rises as the policy improves (in normalised units, inside the support [-10, 10]).
# - **Reward divisors** (notebook 4): `cartpole-balance`'s is dominated by its returns, $\approx(\bar G + \ldots)/10$;
#   `point_mass-easy` has collected very little reward, so the entropy term is most of its divisor, which falls with α.
#
# ## The checkpoint
#
# `main` returns the path of its checkpoint: everything needed to continue the run exactly (with `--save-buffer`,
# also the replay buffer). `python bro_mt.py --resume PATH` with the same task list continues it.

# %%
checkpoint = torch.load(os.path.join(run_dir, checkpoint_path), weights_only=True)
for key, value in checkpoint.items():
    if isinstance(value, torch.Tensor):
        kind = f"tensor {tuple(value.shape)}"
    else:
        kind = f"{len(value)} entries" if isinstance(value, (dict, list)) else str(value)
    print(f"{key:>18}: {kind}")
shutil.rmtree(run_dir)

# %% [markdown]
# ## Many processes, one update
#
# Launched by `torchrun`, the loop above runs in several processes at once (see `docs/distributed.md`). Each process
# owns a block of the tasks: their environments, replay rings and reward statistics. `--batch-size` stays the
# global batch: each process samples its share from its own tasks. All processes hold the same networks, and in
# `update()` one call between each `backward()` and `step()`, `distributed.average_gradients`, replaces every
# process's gradients by their mean over the processes, weighted by each one's share of the batch. Every loss is a
# mean over its batch, so that is the gradient one process would get on the union of the batches.
#
# The cell below checks it. `two_processes.py` (beside this notebook) runs three updates in two gloo processes on
# this CPU: process 0 owns tasks 0 and 1 (8 of 12 samples a batch), process 1 owns task 2 (4 samples). Then this
# notebook runs the same three updates in one process on all 12 samples. The computation is in float64, so
# "equal" means equal to float rounding.

# %%
import subprocess

import two_processes

print(inspect.getsource(two_processes.train))
with tempfile.TemporaryDirectory() as folder:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    env = os.environ | {"GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}  # loopback only
    done = subprocess.run([*command, "two_processes.py", folder], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    print(done.stdout)
    two = [torch.load(os.path.join(folder, f"rank{r}.pt")) for r in range(2)]

torch.set_default_dtype(torch.float64)
real_randn_like, torch.randn_like = torch.randn_like, two_processes.fixed_noise
try:
    one = two_processes.train(two_processes.batches())  # one process, all 12 samples of each batch
    before = two_processes.train([])  # the initial weights, to see how far the updates moved them
finally:
    torch.set_default_dtype(torch.float32)
    torch.randn_like = real_randn_like

groups = ["critic", "target_critic", "actor", "log_alpha"]
gap = {g: max((two[0][k] - one[k]).abs().max().item() for k in one if k.startswith(g)) for g in groups}
moved = {g: max((one[k] - before[k]).abs().max().item() for k in one if k.startswith(g)) for g in groups}
same = all(torch.equal(two[0][k], two[1][k]) for k in one)
print(f"the two processes hold bit-identical weights: {same}")
fig, ax = plt.subplots(figsize=(7, 2.8))
x = np.arange(len(groups))
ax.bar(x - 0.2, [moved[g] for g in groups], 0.4, label="how far 3 updates moved a weight (max)")
ax.bar(x + 0.2, [max(gap[g], 1e-18) for g in groups], 0.4, label="2 processes vs 1 process (max difference)")
ax.set_xticks(x, groups)
ax.set_yscale("log")
ax.set_ylabel("absolute value")
ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8)
plt.tight_layout()
plt.show()
for g in groups:
    print(f"{g:>13}: moved up to {moved[g]:.1e}, two processes differ from one by at most {gap[g]:.1e}")


# %% [markdown]
# ## Change it yourself
#
# - The loop is `main` in `bro_mt.py`, one function from "Training loop" to the end; the phases are marked with
#   `# -- act --`, `# -- step envs --`, `# -- record --`, `# -- store ... --`, `# -- update: ... --`,
#   `# -- log, save: ... --`, `# -- evaluate --`; the run's plumbing (run folder, logging, checkpoints) is in
#   `brc_utils/run.py`.
# - Rerun with `updates_per_step=1` (a lower replay ratio) or `critic_width=128` and compare the curves.
# - Take BRC apart, one switch each: `critic_loss="mse"` (notebook 1), `task_conditioning="none"` or `"multihead"`
#   (notebook 3), `reward_norm=False` (notebook 4).
# - A longer run from a terminal (the README's quick command):
#   `python bro_mt.py --env-ids DMC_TINY --critic-width 128 --batch-size 128 --total-timesteps 20000 --eval-interval 5000 --eval-episodes 3`
# - The paper's setting: `python bro_mt.py --model-size 64M` (seven dog and humanoid tasks, 1M steps, a GPU).

# %% [markdown]
# ## Exercise: the Polyak target update
#
# Inside `update`, right after the critic's step, one line moves the target critic a fraction $\tau$ of the way to the
# critic: $\bar\theta \leftarrow (1 - \tau)\bar\theta + \tau\theta$ (`torch._foreach_lerp_`). Write
# `my_polyak(target_params, online_params, tau)` that returns the new target weights as a list of new tensors. The
# check runs the script's `update` once on a small critic and compares the target critic it leaves with
# `my_polyak` of the target weights before it, the critic's weights after it, and `tau`. Solution:
# `notebooks/solutions/05_training_loop.py`.


# %% tags=["exercise"]
def my_polyak(target_params, online_params, tau):
    # YOUR CODE HERE: return a list of tensors, one per parameter
    raise NotImplementedError


# %% tags=["check"]
from bro_mt import Actor, Batch, Critic, Nets, action_masks_and_target_entropy, make_optimizers, update

answer = answer_or_solution(my_polyak, "05_training_loop")
torch.manual_seed(0)
critic, target_critic = Critic(5, 2, num_tasks=2, width=16), Critic(5, 2, num_tasks=2, width=16)
target_critic.load_state_dict(critic.state_dict())
target_critic.requires_grad_(False)
actor = Actor(5, 2, critic.embedding_dim)
log_alpha = torch.tensor(0.1).log().requires_grad_()
optimizers = make_optimizers(critic, actor, log_alpha, lr=1e-3, weight_decay=1e-4, alpha_lr=1e-3)
nets = Nets(critic, target_critic, actor, log_alpha, *optimizers)
masks, target_entropy = action_masks_and_target_entropy([1, 2], 2, "cpu")  # task 0: one action dim, task 1: two
batch = Batch(
    obs=torch.randn(64, 5),
    actions=torch.rand(64, 2) * 2 - 1,
    rewards=torch.rand(64),
    next_obs=torch.randn(64, 5),
    terminations=torch.zeros(64),
    task_ids=torch.randint(0, 2, (64,)),
)
batch = batch._replace(actions=batch.actions * masks[batch.task_ids])
target_before = [p.clone() for p in target_critic.parameters()]
support = torch.linspace(-10, 10, 101)
update(batch, nets, masks, target_entropy, torch.ones(2), support, gamma=0.99, tau=0.005)
mine = answer(target_before, [p.detach() for p in critic.parameters()], 0.005)
for new, theirs in zip(mine, target_critic.parameters()):
    torch.testing.assert_close(new, theirs)
moved = max((p - q).abs().max().item() for p, q in zip(target_critic.parameters(), target_before))
print(f"my_polyak reproduces update's target critic (largest move of a target weight: {moved:.2e})")
