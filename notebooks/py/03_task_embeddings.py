# %% [markdown]
# # 3. Task embeddings
#
# One BRC critic serves every task. It learns which task a sample comes from through a **learnable task embedding**:
# a 32-number vector per task, normalised to unit length, fed to the critic next to the observation and the action.
# This notebook shows:
#
# 1. how the critic is conditioned (`Critic.embed`, `Critic.forward`);
# 2. why the actor receives a **detached** copy of the embedding, checked with autograd on the real losses;
# 3. the embeddings after a short multi-task run of `main`: a heatmap of their cosine similarities, and how far a short
#    run moves them;
# 4. a toy where tasks differ sharply, trained long enough for the embeddings to separate, read honestly;
# 5. an exercise: the actor loss *without* the detach, checked against `actor_loss`.
#
# Where to look in `bro_mt.py`: `Critic` (it owns `task_embedding`), `actor_loss` (the `.detach()`), `update` (the
# critic is frozen during the actor step), the `act` phase of `main` (`critic.embed(task_ids)`), `Args.embedding_dim`.

# %%
import os
import sys

# Import the real scripts from the repository root, whether Jupyter runs in notebooks/ or in the root.
ROOT = os.path.abspath(".." if os.path.exists(os.path.join("..", "bro_mt.py")) else ".")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))  # exercises.py

import shutil
import tempfile

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from brc_utils.envs import DMCEnv
from bro_mt import (
    action_masks_and_target_entropy,
    Actor,
    Args,
    Batch,
    Critic,
    ReplayBuffer,
    actor_loss,
    critic_loss,
    main,
    model_parameter_counts,
    q_value,
)
from exercises import answer_or_solution

torch.manual_seed(0)
torch.set_num_threads(1)  # small networks: one thread is as fast and leaves the other cores free
plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (10, 3), "font.size": 12})
NOTEBOOK_DIR = os.getcwd()

# %% [markdown]
# ## How the critic is conditioned
#
# For task $i$ the critic reads $e_i = E_i / \lVert E_i \rVert$, where $E \in \mathbb R^{T\times 32}$ is an
# `nn.Embedding` built by `make_task_embedding`: every entry drawn from $\mathcal N(0, 1/32)$, as flax's `nn.Embed`
# in the authors' code, so each row starts with a norm of about 1. The critic predicts
#
# $$p(\cdot \mid s, a, e_i) = \mathrm{softmax}\big(\mathrm{BroNet}([s, a, e_i])\big).$$
#
# The unit norm keeps the embedding on the same scale as the (LayerNorm-ed) rest of the input however long it trains.
# Only the direction of $E_i$ matters, and the size of the start decides how fast that direction can turn: AdamW moves
# every entry by about the learning rate per update *whatever the gradient's size*, so a row of norm ~1 turns
# ~$\sqrt{32} \approx 5.7$ times faster than a row of norm ~5.7 (PyTorch's default $\mathcal N(0, 1)$ start).
# With a single task there is no embedding at all (zero width), so single-task BRC is plain BRC.

# %%
critic = Critic(obs_dim=5, action_dim=1, num_tasks=3, width=32)
task_ids = torch.tensor([0, 1, 2, 0])
embedding = critic.embed(task_ids)  # [batch, 32]
print(
    "embedding table",
    tuple(critic.task_embedding.weight.shape),
    "| norms of e_i:",
    embedding.norm(dim=-1).detach().numpy().round(4),
)
obs, action = torch.randn(4, 5), torch.rand(4, 1) * 2 - 1
print(
    "critic input [obs, action, e]:",
    tuple(torch.cat([obs, action, embedding], -1).shape),
    "-> logits",
    tuple(critic(obs, action, task_ids).shape),
)
print(
    "with a single task, main's critic has",
    model_parameter_counts(5, 1, num_tasks=1, width=32)["task_embedding"],
    "embedding parameters",
)
print("raw row norms at initialisation:", critic.task_embedding.weight.norm(dim=-1).detach().numpy().round(2))

# %% [markdown]
# ## The actor reads a detached copy
#
# The actor needs to know the task too: $\pi(a \mid s, \mathrm{sg}(e_i))$, where sg is stop-gradient
# (`critic.embed(task_ids).detach()` in `actor_loss` and in `main`'s act phase). The embedding belongs to the critic
# and is trained **only by the critic's cross-entropy**. Why not let the actor's loss train it as well?
#
# - The actor maximises $Q(s, a, e_i) - \alpha \log\pi$. If its gradient reached $e_i$, it would move the task's
#   identity toward wherever the critic happens to predict high values: the actor would be rewarded for redefining the
#   task rather than for solving it, exploiting the critic's errors.
# - The critic's input would then shift under it for reasons unrelated to its own loss. One owner, one objective
#   (the TD loss) keeps the embedding a description of the task's values. The authors' JAX code does the same: the
#   critic owns the embedding and hands it to the actor.
#
# We check it on the real losses: the critic loss puts gradient on the rows of the tasks in the batch; the actor
# loss, run as `update` runs it, puts none on the embedding; and without the detach, even the actor's entropy term
# alone would.

# %%
critic, target_critic = Critic(5, 1, num_tasks=3, width=32), Critic(5, 1, num_tasks=3, width=32)
target_critic.load_state_dict(critic.state_dict())
actor = Actor(obs_dim=5, action_dim=1, embedding_dim=critic.embedding_dim)
log_alpha, support, mask = torch.tensor(0.1).log(), torch.linspace(-10, 10, 101), torch.ones(64, 1)
batch = Batch(
    obs=torch.randn(64, 5),
    actions=torch.rand(64, 1) * 2 - 1,
    rewards=torch.rand(64),
    next_obs=torch.randn(64, 5),
    terminations=torch.zeros(64),
    task_ids=torch.randint(0, 2, (64,)),
)  # samples of tasks 0 and 1 only

loss_q, _ = critic_loss(critic, target_critic, actor, log_alpha, batch, mask, torch.ones(64), support, gamma=0.99)
loss_q.backward()
print(
    "critic loss -> gradient norm per embedding row:",
    critic.task_embedding.weight.grad.norm(dim=-1).numpy().round(4),
    "(task 2 is not in the batch)",
)
critic.zero_grad(set_to_none=True)

loss_pi, _ = actor_loss(actor, critic, log_alpha, batch.obs, batch.task_ids, mask, support)
loss_pi.backward(inputs=list(actor.parameters()))  # as in update(): gradients for the actor's weights only
print(
    "actor loss  -> embedding gradient:",
    critic.task_embedding.weight.grad,
    "| actor gradient norm:",
    round(torch.cat([p.grad.flatten() for p in actor.parameters()]).norm().item(), 4),
)

actions, log_probs = actor.sample(batch.obs, critic.embed(batch.task_ids), mask)  # no .detach()
(log_alpha.exp() * log_probs).mean().backward()
print(
    "without the detach, the entropy term alone -> embedding gradient norm:",
    round(critic.task_embedding.weight.grad.norm().item(), 4),
)

# %% [markdown]
# ## Embeddings after a short multi-task run
#
# We train the real loop (`main`, as in notebook 5) on six tasks: two pairs that share a body (cartpole balance with a
# dense and a sparse reward; walker stand and walk), the cartpole swing-up and the point mass. A tiny critic
# (width 64), 100-step episodes, 1 000 environment steps: about a minute on a CPU. A second run with the same seed
# stopped after one step gives the embeddings at initialisation. Both write to a temporary directory.

# %%
TASKS = [
    "cartpole-balance",
    "cartpole-balance_sparse",
    "cartpole-swingup",
    "walker-stand",
    "walker-walk",
    "point_mass-easy",
]
settings = dict(
    env_ids=TASKS,
    critic_width=64,
    batch_size=128,
    learning_starts=200,
    buffer_size=1000,
    max_episode_steps=100,
    eval_interval=10_000,
    eval_episodes=1,
    log_interval=500,
    save_buffer=True,
)
run_dir = tempfile.mkdtemp(prefix="brc_notebook3_")
os.chdir(run_dir)
try:
    initial = torch.load(main(Args(**settings, total_timesteps=1)), weights_only=True)
    trained = torch.load(main(Args(**settings, total_timesteps=1000)), weights_only=True)
finally:
    os.chdir(NOTEBOOK_DIR)


# %%
def cosine_matrix(vectors):
    unit = F.normalize(vectors, dim=-1)
    return (unit @ unit.T).numpy()


def heatmap(ax, matrix, title, task_labels=True):
    ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=10, color="w" if abs(value) > 0.6 else "k")
    ax.set_xticks(range(len(TASKS)), TASKS, rotation=60, ha="right", fontsize=10)
    ax.set_yticks(range(len(TASKS)), TASKS if task_labels else [], fontsize=10)
    ax.set_title(title, fontsize=12)


e_init, e_trained = initial["critic"]["task_embedding.weight"], trained["critic"]["task_embedding.weight"]
fig, axes = plt.subplots(1, 3, figsize=(14, 4.6))
heatmap(axes[0], cosine_matrix(e_init), "cosine similarity at initialisation")
heatmap(axes[1], cosine_matrix(e_trained), "after 1 000 steps (1 600 updates)", task_labels=False)
heatmap(axes[2], cosine_matrix(e_trained - e_init), "of the changes (trained − initial)", task_labels=False)
plt.tight_layout()
plt.show()
for task, moved, norm in zip(TASKS, (e_trained - e_init).norm(dim=-1), e_init.norm(dim=-1)):
    print(f"{task:>24}: raw embedding of norm {norm:.2f} moved by {moved:.2f}")

# %% [markdown]
# **Reading the heatmaps honestly.** The rows start with norms near 1 (`make_task_embedding`), and AdamW moves each
# entry by up to about the learning rate (3e-4) per update, so 1 600 updates can turn the directions by a fair angle:
# the moves printed above are a good part of each row's length. In the run saved here, the largest change is that
# the two walker tasks came together (the pairs are listed below, largest rise first). A likely reason, not a proof:
# the walkers share a body, an observation layout (24 numbers, where the other tasks are zero-padded) and six action
# dimensions, so the same change of the embedding helps the critic's predictions on both. What these heatmaps do
# not show: that the embeddings group tasks by how related they are in general. The cartpole pair that differs only
# in the sparsity of its reward has not come together, this is one seed and 1 000 steps, and the third panel (the
# directions of the changes) is noisy. To watch structure appear on real tasks, run
# `python bro_mt.py --env-ids cartpole-balance cartpole-balance_sparse cartpole-swingup walker-stand walker-walk
# point_mass-easy --critic-width 256 --total-timesteps 200000` on a GPU and rerun the cells above on its checkpoint;
# the toy further down makes the point in seconds with tasks whose relations are known.

# %%
rise = cosine_matrix(e_trained) - cosine_matrix(e_init)
pairs = sorted(((rise[i, j], i, j) for i in range(len(TASKS)) for j in range(i)), reverse=True)
for change, i, j in pairs[:3] + pairs[-1:]:
    before, after = cosine_matrix(e_init)[i, j], cosine_matrix(e_trained)[i, j]
    print(f"{TASKS[i]:>23} / {TASKS[j]:<23}: similarity {before:+.2f} -> {after:+.2f}")

# %% [markdown]
# What *is* already visible after a short run is that the critic uses the embedding: the same state-action pairs,
# seen through different tasks' embeddings, get different values. Below, the expected Q (in normalised units) of the
# transitions stored for each task (rows) when the critic is told it is task $j$ (columns).

# %%
num_tasks, obs_dim = trained["obs"].shape  # observations padded to the largest task (walker: 24)
action_dim = trained["actor"]["mean.weight"].shape[-1]  # actions padded likewise (walker: 6)
rb = ReplayBuffer(num_tasks, settings["buffer_size"], obs_dim, action_dim, device="cpu")
rb.load_state_dict(trained["replay_buffer"])
critic = Critic(obs_dim, action_dim, num_tasks, settings["critic_width"])
critic.load_state_dict(trained["critic"])
support = torch.linspace(-10, 10, 101)
q_swap = np.zeros((num_tasks, num_tasks))
with torch.no_grad():
    for i in range(num_tasks):
        obs, actions = rb.obs[i, : rb.size], rb.actions[i, : rb.size]
        for j in range(num_tasks):
            told = torch.full((len(obs),), j)
            q_swap[i, j] = q_value(critic(obs, actions, told), support).mean()
fig, ax = plt.subplots(figsize=(6, 5))
image = ax.imshow(q_swap, cmap="viridis")
for (i, j), value in np.ndenumerate(q_swap):
    ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=10, color="k" if value > q_swap.mean() else "w")
ax.set_xticks(range(num_tasks), TASKS, rotation=60, ha="right", fontsize=10)
ax.set_yticks(range(num_tasks), TASKS, fontsize=10)
ax.set_xlabel("embedding given to the critic")
ax.set_ylabel("task the transitions come from")
plt.colorbar(image, ax=ax, label="mean Q")
plt.show()
shutil.rmtree(run_dir)

# %% [markdown]
# Rows differ more than columns: after a short run Q depends mostly on the state (for the walker's transitions the
# embedding hardly matters yet). But within most rows the value moves with the embedding: the critic has started to
# use it to tell tasks apart, long before the embeddings themselves have travelled far. Small moves of a unit vector
# are enough, because the critic's first layer can amplify them.

# %% [markdown]
# ## A toy where the tasks differ sharply
#
# Real tasks differ in many ways at once, and a short run cannot say which of them the embeddings pick up. A toy can
# make the answer known in advance. Four "tasks" share **the same transitions** (random-action episodes of
# `cartpole-balance`) and differ only in their rewards: *upright* pays the task's own reward $r$, *fallen* pays
# $1 - r$, and each comes twice, as two tasks with their own embeddings. Whatever the critic must learn to tell apart,
# it can only read from the embedding. If the embedding learns the tasks' values, the two copies should move
# together and the opposite tasks apart.
#
# The critic is trained with `critic_loss` and the Polyak target, as in `update`; the actor is left at its random start
# (the embedding is trained by the critic's loss only, so the actor step would not change the embeddings). Two
# shortcuts compress a long run into ~20 seconds: $\gamma = 0.9$ (values settle within ~10 steps instead of ~100),
# and a learning rate of 3e-3, ten times the script's: AdamW moves an entry by about the learning rate per update, so
# 1 500 updates here move the embeddings about as far as 15 000 at the script's rate.

# %%
env, rng = DMCEnv("cartpole-balance", seed=0, max_episode_steps=200), np.random.default_rng(0)
transitions = []
for episode in range(3):
    obs, _ = env.reset()
    done = False
    while not done:
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        transitions.append((obs, action, reward, next_obs, float(terminated)))
        obs, done = next_obs, terminated or truncated

TOY_TASKS = ["upright", "upright (copy)", "fallen", "fallen (copy)"]
toy_buffer = ReplayBuffer(len(TOY_TASKS), len(transitions), obs_dim=5, action_dim=1, device="cpu")
for obs, action, reward, next_obs, terminated in transitions:
    rewards = np.array([reward, reward, 1 - reward, 1 - reward])  # one transition, four tasks
    same = lambda x: np.stack([x] * len(TOY_TASKS))  # noqa: E731
    toy_buffer.add(same(obs), same(action), rewards, same(next_obs), same(np.float32(terminated)))

torch.manual_seed(0)
toy_critic, toy_target = Critic(5, 1, len(TOY_TASKS), width=32), Critic(5, 1, len(TOY_TASKS), width=32)
toy_target.load_state_dict(toy_critic.state_dict())
toy_target.requires_grad_(False)
toy_actor = Actor(5, 1, toy_critic.embedding_dim)
toy_masks, _ = action_masks_and_target_entropy([1] * len(TOY_TASKS), 1, "cpu")
toy_optimizer = torch.optim.AdamW(toy_critic.parameters(), lr=3e-3, weight_decay=1e-4)
toy_start = toy_critic.task_embedding.weight.detach().clone()
support, log_alpha = torch.linspace(-10, 10, 101), torch.tensor(0.1).log()
toy_losses = []
for step in range(1500):
    batch = toy_buffer.sample(128, "cpu")
    loss, _ = critic_loss(
        toy_critic, toy_target, toy_actor, log_alpha, batch, toy_masks[batch.task_ids], 1.0, support, gamma=0.9
    )
    toy_optimizer.zero_grad()
    loss.backward()
    toy_optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(toy_target.parameters()), list(toy_critic.parameters()), 0.005)
    toy_losses.append(loss.item())
toy_end = toy_critic.task_embedding.weight.detach().clone()
print(f"{len(transitions)} transitions per task; critic loss {toy_losses[0]:.2f} -> {np.mean(toy_losses[-100:]):.2f}")


# %%
def toy_heatmap(ax, matrix, title):
    ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=12, color="w" if abs(value) > 0.6 else "k")
    ax.set_xticks(range(len(TOY_TASKS)), TOY_TASKS, rotation=45, ha="right")
    ax.set_yticks(range(len(TOY_TASKS)), TOY_TASKS)
    ax.set_title(title, fontsize=12)


fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
toy_heatmap(axes[0], cosine_matrix(toy_start), "at initialisation")
toy_heatmap(axes[1], cosine_matrix(toy_end), "after 1 500 updates")
toy_heatmap(axes[2], cosine_matrix(toy_end - toy_start), "of the changes")
plt.tight_layout()
plt.show()
print("raw norms at the start:", toy_start.norm(dim=-1).numpy().round(2))
print("moved by:              ", (toy_end - toy_start).norm(dim=-1).numpy().round(2))


# %% [markdown]
# **What the toy shows.** From random directions (left), 1 500 updates of the critic's loss alone turned the
# embeddings so that each task's two copies became more similar and the opposite tasks less (middle). The changes
# themselves (right) point the same way for copies and opposite ways for opposite tasks, and each row moved by about
# half its length. So the embedding learns, from the critic's cross-entropy only, which tasks share their values.
#
# **What it does not show.** The copies are far from identical: each still carries its random start, and nothing
# pulls two embeddings together once both predict well. The tasks differ only in their rewards on identical data,
# where real tasks differ in dynamics and observations too. And a 10× learning rate with $\gamma = 0.9$ is not the
# script's setting. Whether the paper's tasks group by similarity after millions of updates is a claim this notebook
# cannot check on a CPU.

# %% [markdown]
# ## Change it yourself
#
# - `--embedding-dim` sets the embedding size (32 in the paper).
# - Remove the `.detach()` in `actor_loss` *and* the `inputs=` of the actor's backward in `update` (it asks for the
#   actor's gradients only), and the actor's loss trains the embedding too; compare the critic loss of both versions in notebook 5's run.
# - The script's ablations: `--task-conditioning multihead` (a shared trunk with one output head per task; the actor
#   reads a one-hot task id) and `--task-conditioning none` (neither network is told the task).
# - Freeze the embedding (`critic.task_embedding.requires_grad_(False)`) to get fixed random task codes.

# %% [markdown]
# ## Exercise: the actor loss without the detach
#
# Write `my_actor_loss_through_embedding(actor, critic, log_alpha, obs, task_ids, action_mask, support)`: the same
# value as `actor_loss`'s loss, mean$(\alpha \log\pi(a|s) - Q(s, a))$ with $Q$ the expectation of the members' mean
# distribution, but with the actor reading `critic.embed(task_ids)` *without* `.detach()`, so that the loss's gradient
# reaches the task embedding through the actor too. Return only the loss. The check runs both on the same random
# batch with the same seed and asks for equal values; then, with the critic's other weights frozen, for a gradient
# on the embedding rows of the tasks in the batch that `actor_loss` does not give (and none on the absent task).
# Solution: `notebooks/solutions/03_task_embeddings.py`.


# %% tags=["exercise"]
def my_actor_loss_through_embedding(actor, critic, log_alpha, obs, task_ids, action_mask, support):
    # YOUR CODE HERE: return the loss (a scalar tensor)
    raise NotImplementedError


# %% tags=["check"]
answer = answer_or_solution(my_actor_loss_through_embedding, "03_task_embeddings")
torch.manual_seed(0)
check_critic = Critic(5, 1, num_tasks=3, width=16)
check_actor = Actor(5, 1, check_critic.embedding_dim)
check_critic.trunk.requires_grad_(False)  # only the embedding collects gradients here
check_critic.head.requires_grad_(False)
check_obs, check_ids = torch.randn(32, 5), torch.randint(0, 2, (32,))  # tasks 0 and 1; task 2 is absent
check_args = (check_obs, check_ids, torch.ones(32, 1), torch.linspace(-10, 10, 101))
torch.manual_seed(1)  # the same noise for both samples
reference, _ = actor_loss(check_actor, check_critic, torch.tensor(0.1).log(), *check_args)
torch.manual_seed(1)
mine = answer(check_actor, check_critic, torch.tensor(0.1).log(), *check_args)
torch.testing.assert_close(mine, reference)
# Both reach the embedding through the critic's Q (update() asks for the actor's gradients only); only yours also
# reaches it through the actor's input. That extra part is what the detach removes.
(via_q,) = torch.autograd.grad(reference, check_critic.task_embedding.weight)
(yours,) = torch.autograd.grad(mine, check_critic.task_embedding.weight)
via_actor = (yours - via_q).norm(dim=-1)
assert bool((via_actor[:2] > 1e-6).all()), "no gradient through the actor's input: is the embedding still detached?"
assert via_actor[2] == 0, "task 2 is not in the batch: its row must get no gradient"
print("same value as actor_loss; gradient through the actor's input per embedding row:", via_actor.numpy().round(4))
