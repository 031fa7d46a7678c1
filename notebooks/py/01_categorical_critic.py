# %% [markdown]
# # 1. The categorical critic
#
# BRC's critic does not output one number $Q(s,a)$. It outputs a **probability distribution over 101 fixed return
# values** ("atoms") and is trained with **cross-entropy** against a target distribution. This notebook runs the real
# code from `bro_mt.py` to show:
#
# 1. the support (the atoms) and how a distribution becomes a Q-value;
# 2. the target: the distributional Bellman update moves the atoms, and the **C51 projection** puts the mass back
#    onto the fixed support (`categorical_projection`);
# 3. cross-entropy versus mean-squared error: why cross-entropy keeps a task with 100× larger rewards from drowning
#    out the others, and why reward normalisation is still needed.
#
# Where to look in `bro_mt.py`: `Args.num_bins / v_min / v_max`, `categorical_projection`, `critic_loss`,
# `Critic` (its last layer has `num_bins` outputs), `reward_scale`.

# %%
import os
import sys

# Import the real scripts from the repository root, whether Jupyter runs in notebooks/ or in the root.
ROOT = os.path.abspath(".." if os.path.exists(os.path.join("..", "bro_mt.py")) else ".")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))  # exercises.py

import matplotlib.pyplot as plt
import numpy as np
import torch

from brc_utils.envs import DMCEnv
from bro_mt import (
    Actor,
    Args,
    Batch,
    Critic,
    RewardNormalizer,
    categorical_projection,
    critic_loss,
    mse_critic_loss,
    q_value,
    reward_scale,
)
from exercises import answer_or_solution

torch.manual_seed(0)
torch.set_num_threads(1)  # the networks here are tiny: one thread is as fast and leaves the other cores free
plt.rcParams.update(
    {"figure.dpi": 72, "figure.figsize": (10, 3), "axes.grid": True, "grid.alpha": 0.3, "font.size": 12}
)

# %% [markdown]
# ## The support
#
# The critic predicts probabilities $p_j(s,a)$, $j = 0..100$, over atoms evenly spaced on $[v_{min}, v_{max}] = [-10, 10]$:
#
# $$z_j = v_{min} + j\,\Delta z, \qquad \Delta z = \frac{v_{max}-v_{min}}{N-1} = 0.2, \qquad
# Q(s,a) = \sum_j z_j\, \bar p_j(s,a)$$
#
# where $\bar p$ is the mean over the ensemble's two members of their softmax. Returns outside $[-10, 10]$ cannot be
# represented, which is why BRC normalises every task's rewards (notebook 4). Below: what a freshly initialised
# `Critic` (two ensemble members, one batched call) predicts for one random state-action.

# %%
args = Args()  # the paper's defaults
support = torch.linspace(args.v_min, args.v_max, args.num_bins)
print(
    f"{args.num_bins} atoms on [{args.v_min}, {args.v_max}], spacing {(args.v_max - args.v_min) / (args.num_bins - 1):.1f}"
)

critic = Critic(obs_dim=5, action_dim=1, num_tasks=2, width=64)
obs, action, task_ids = torch.randn(1, 5), torch.rand(1, 1) * 2 - 1, torch.tensor([0])
with torch.no_grad():
    logits = critic(obs, action, task_ids)  # [members, batch, bins] = [2, 1, 101]
probs = logits.softmax(-1)
q = q_value(logits, support)  # sum_j z_j * (mean over members of softmax)_j
print("logits", tuple(logits.shape), "| Q(s, a) =", round(q.item(), 3))

for member in range(2):
    plt.plot(support, probs[member, 0], label=f"member {member}")
plt.axvline(q.item(), color="k", ls="--", label="Q = expectation of the mean")
plt.xlabel("return atom $z_j$")
plt.ylabel("probability")
plt.title("an untrained critic's distribution")
plt.legend()
plt.show()

# %% [markdown]
# ## The target and the C51 projection
#
# For a transition $(s, a, r, s')$ with termination flag $d$ and a next action $a' \sim \pi(\cdot|s')$, soft
# (SAC) distributional Bellman moves every atom of the target network's distribution at $(s', a')$ to
#
# $$\hat z_j = r + \gamma (1 - d)\,\big(z_j - \alpha \log \pi(a'|s')\big)$$
#
# keeping its probability $p_j(s', a')$. The moved atoms no longer sit on the support, so each one's mass is split
# between its two neighbouring atoms in proportion to how close it is (Bellemare et al., 2017): with the fractional
# index $b = (\mathrm{clip}(\hat z_j, v_{min}, v_{max}) - v_{min}) / \Delta z$, $l = \lfloor b \rfloor$, $u = l + 1$,
#
# $$m_l \mathrel{+}= p_j\,(u - b), \qquad m_u \mathrel{+}= p_j\,(b - l).$$
#
# `critic_loss` builds $\hat z$ and `categorical_projection(target_atoms, probs, support)` does the split for a whole
# batch with two `scatter_add_` calls. Below we draw it with $\gamma = 0.9$ (the script uses 0.99) so that the
# contraction is visible.

# %%
# A made-up distribution at (s', a') with two bumps, and a transition with reward 1.5 (no termination, alpha = 0).
next_probs = torch.exp(-((support - 2) ** 2)) + 0.5 * torch.exp(-((support - 6) ** 2) / 0.5)
next_probs = (next_probs / next_probs.sum())[None]  # [batch=1, bins]
reward, gamma = 1.5, 0.9
target_atoms = reward + gamma * support[None]  # [1, bins]: where each atom moves
target_probs = categorical_projection(target_atoms, next_probs, support)

fig, axes = plt.subplots(1, 3, figsize=(13, 3), sharey=True)
axes[0].bar(support, next_probs[0], width=0.18)
axes[0].set_title("p(s', a') on the support")
axes[1].vlines(target_atoms[0], 0, next_probs[0], color="C1")
axes[1].set_title(f"atoms moved to r + γz (r={reward}, γ={gamma})")
axes[2].bar(support, target_probs[0], width=0.18, color="C2")
axes[2].set_title("projected back onto the support")
for ax in axes:
    ax.set_xlim(-1, 11)
    ax.set_xlabel("return")
plt.show()

mean = lambda p: (p * support).sum().item()
print(
    f"mass {target_probs.sum().item():.6f}; mean {mean(target_probs[0]):.4f} = r + γ·mean(p) = {reward + gamma * mean(next_probs[0]):.4f}"
)


# %% [markdown]
# The projection keeps the total mass and, as long as nothing is clipped, the mean: the projected target's Q-value is
# exactly $r + \gamma Q(s', a')$, the ordinary Bellman target. Two details worth seeing with single atoms:


# %%
def project_one_atom(position):
    # One atom carrying all the mass at `position` (the other 100 atoms carry none).
    atoms, mass = torch.full((1, len(support)), float(position)), torch.zeros(1, len(support))
    mass[0, 0] = 1.0
    projected = categorical_projection(atoms, mass, support)[0]
    return {
        round(support[j].item(), 2) + 0.0: round(projected[j].item(), 3)
        for j in (projected > 1e-4).nonzero()[:, 0].tolist()
    }


print("atom at 0.05 ->", project_one_atom(0.05), " (a quarter of the way from 0.0 to 0.2)")
print(
    "atom at z_52 ->",
    project_one_atom(support[52]),
    "        (exactly on an atom: it keeps all the mass, up to float32 rounding)",
)
print("atom at 37.0 ->", project_one_atom(37.0), "       (clipped: everything above v_max lands on v_max)")

big_reward = 5.0
clipped = categorical_projection(big_reward + 0.99 * support[None], next_probs, support)
print(
    f"\nr = {big_reward}, γ = 0.99: the true target mean is {big_reward + 0.99 * mean(next_probs[0]):.2f}, the projection's is "
    f"{mean(clipped[0]):.2f} -- returns beyond the support are lost, hence reward normalisation."
)

# %% [markdown]
# ## Cross-entropy versus MSE
#
# The critic is trained by minimising the cross-entropy between the projected target $m$ and each member's prediction,
#
# $$\mathcal L_{CE} = -\sum_j m_j \log p_j(s,a), \qquad \frac{\partial \mathcal L_{CE}}{\partial\,\mathrm{logit}_j} = p_j - m_j .$$
#
# That gradient is a difference of two probability vectors: its norm is at most $\sqrt 2$ **whatever the size of the
# return**. A scalar critic trained with MSE, $\mathcal L = (Q(s,a) - y)^2$, has $\partial\mathcal L/\partial Q = 2(Q - y)$,
# which grows linearly with the error, and the error grows with the scale of the rewards. Below: the gradient with
# respect to the network's output for a prediction of 0 and a target $y$, under both losses (the categorical target is
# the two-atom projection of $y$).

# %%
targets = torch.logspace(-2, 3, 60)  # target returns from 0.01 to 1000
ce_grad = []
for y in targets:
    logits = torch.zeros(1, len(support), requires_grad=True)  # uniform prediction: Q = 0
    target = categorical_projection(
        torch.full((1, len(support)), y.item()), torch.full((1, len(support)), 1 / len(support)), support
    )
    (-(target * logits.log_softmax(-1)).sum()).backward()
    ce_grad.append(logits.grad.norm().item())
plt.figure(figsize=(6, 3))
plt.loglog(targets, 2 * targets, label="MSE: |2(Q − y)|")
plt.loglog(targets, ce_grad, label="cross-entropy: ‖p − m‖")
plt.axvline(args.v_max, color="gray", ls=":", label="v_max")
plt.xlabel("target y (prediction Q = 0)")
plt.ylabel("gradient norm at the output")
plt.legend()
plt.show()

# %% [markdown]
# ## Two tasks whose rewards differ by 100×
#
# In multi-task training one batch mixes samples of all tasks, and one set of weights receives the sum of their
# gradients. If one task's gradients are 100× larger, it decides where the shared weights go. We measure it with the
# real pieces of `bro_mt.py`:
#
# - **data**: random-action episodes of `cartpole-balance`. Task A gets its rewards as they are, task B the same
#   transitions with rewards ×100, so the two tasks differ *only* in reward scale;
# - **cross-entropy**: `critic_loss` itself, on a `Critic` with two tasks (width 64);
# - **MSE**: the same `Critic` class with a single output (`num_bins=1`) read as $Q$, trained by `mse_critic_loss`
#   (the script's `--critic-loss mse` ablation), which regresses each member on the same soft Bellman target,
#   $r + \gamma(1-d)\big(Q_{target}(s', a') - \alpha \log\pi(a'|s')\big)$, with a squared error;
# - **reward normalisation**: off (every reward divided by 1) or on (`RewardNormalizer` statistics of each task and
#   `reward_scale`, exactly as `update` computes the divisor).
#
# For each combination we compute, at initialisation, the norm of the gradient of each task's loss with respect to the
# shared weights (everything but the task embedding), averaged over 5 seeds.

# %%
REWARD_MULTIPLIER = [1.0, 100.0]  # task A, task B
env, rng = DMCEnv("cartpole-balance", seed=0, max_episode_steps=200), np.random.default_rng(0)
normalizer = RewardNormalizer(num_tasks=2, gamma=args.gamma)
transitions = []
for episode in range(5):
    obs, _ = env.reset()
    done = False
    while not done:
        action = rng.uniform(-1, 1, 1).astype(np.float32)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        transitions.append((obs, action, reward, next_obs, float(terminated)))
        for task, multiplier in enumerate(REWARD_MULTIPLIER):
            normalizer.record(task, multiplier * reward)
        obs, done = next_obs, terminated or truncated
    for task in range(2):
        normalizer.end_episode(task, terminated)

obs, actions, rewards, next_obs, terminations = (
    torch.as_tensor(np.array(x), dtype=torch.float32) for x in zip(*transitions)
)
task_batches = [
    Batch(obs, actions, multiplier * rewards, next_obs, terminations, torch.full((len(obs),), task))
    for task, multiplier in enumerate(REWARD_MULTIPLIER)
]
print(
    f"{len(obs)} transitions per task; mean reward: task A {task_batches[0].rewards.mean():.2f}, task B {task_batches[1].rewards.mean():.1f}"
)

alpha = torch.tensor(args.init_temperature)
target_entropy = torch.full((2,), -1 / 2)  # -|A|/2 with one action dimension
scales = {
    "raw rewards": torch.ones(2),
    "normalised": reward_scale(
        torch.as_tensor(normalizer.max_abs_return(), dtype=torch.float32), alpha, target_entropy, args.gamma
    ),
}
print(
    "G_bar per task:",
    normalizer.max_abs_return().round(1),
    "-> reward divisor when normalised:",
    scales["normalised"].numpy().round(2),
)


# %%
def shared_gradient_norm(loss, critic):
    shared = [p for name, p in critic.named_parameters() if not name.startswith("task_embedding")]
    return torch.sqrt(sum(g.pow(2).sum() for g in torch.autograd.grad(loss, shared))).item()


log_alpha, action_mask = alpha.log(), torch.ones(256, 1)
norms = {}  # (loss, rewards) -> [task A, task B], mean over seeds
for seed in range(5):
    torch.manual_seed(seed)
    actor = Actor(obs_dim=5, action_dim=1, embedding_dim=32)
    for loss_name, num_bins in [("MSE", 1), ("cross-entropy", args.num_bins)]:
        critic, target_critic = Critic(5, 1, 2, 64, num_bins), Critic(5, 1, 2, 64, num_bins)
        target_critic.load_state_dict(critic.state_dict())
        for scale_name, scale in scales.items():
            for task, full_batch in enumerate(task_batches):
                batch = Batch(
                    *(
                        x[torch.randint(len(obs), (256,), generator=torch.Generator().manual_seed(seed))]
                        for x in full_batch
                    )
                )
                divisor = scale[batch.task_ids]
                loss_fn = mse_critic_loss if num_bins == 1 else critic_loss  # the MSE ablation has its own loss
                loss, _ = loss_fn(
                    critic, target_critic, actor, log_alpha, batch, action_mask, divisor, support, args.gamma
                )
                norms.setdefault((loss_name, scale_name), np.zeros(2))[task] += shared_gradient_norm(loss, critic) / 5

for key, (a, b) in norms.items():
    print(f"{key[0]:>13}, {key[1]:<11}: task A {a:8.3f}  task B {b:8.3f}  ratio B/A {b / a:6.1f}")

# %%
labels = [f"{loss}\n{rewards}" for loss, rewards in norms]
values = np.array(list(norms.values()))  # [groups, tasks]
x = np.arange(len(labels))
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.bar(x - 0.2, values[:, 0], 0.4, label="task A (rewards ×1)")
ax.bar(x + 0.2, values[:, 1], 0.4, label="task B (rewards ×100)")
for i, (a, b) in enumerate(values):
    ax.text(i, max(a, b) * 1.3, f"B/A = {b / a:.1f}", ha="center")
ax.set_yscale("log")
ax.set_ylim(top=values.max() * 6)
ax.set_xticks(x, labels)
ax.set_ylabel("‖∇ shared weights‖ of each task's loss")
ax.legend(loc="upper right")
plt.show()

# %% [markdown]
# **Reading the chart.**
#
# - *MSE on raw rewards*: task B's gradient is tens of times larger than task A's (not the full 100×, because the
#   bootstrapped half of the target comes from the same untrained target critic for both tasks). In a mixed batch
#   the shared weights follow task B almost only: this is the task interference BRC sets out to remove.
# - *Cross-entropy on raw rewards*: the gradients stay within a small factor of each other, because $\|p - m\|$ is
#   bounded. But the balance is partly bought by clipping: most of task B's target mass sits on $v_{max}$ (checked
#   below), so its critic cannot tell good states from better ones.
# - *Normalised rewards*: both losses are balanced at initialisation; normalisation fixes the *scale* of the targets.
#   What it does not change is that the MSE gradient grows with the error: a task whose values are still far off (a
#   task that just found a sparse reward, or whose $\bar G$ just jumped) pulls in proportion, while the cross-entropy
#   gradient of every sample stays bounded. BRC uses both: normalisation to put every task inside the support,
#   cross-entropy to keep each sample's pull bounded.

# %%
for scale_name, scale in scales.items():
    batch_b = task_batches[1]
    # The target atoms of task B with the support itself as next distribution (entropy term left out).
    atoms = batch_b.rewards[:, None] / scale[1] + args.gamma * (1 - batch_b.terminations[:, None]) * support
    uniform = torch.full_like(atoms, 1 / len(support))
    top = categorical_projection(atoms, uniform, support)[:, -1].mean().item()
    print(f"task B, {scale_name:<11}: {100 * top:5.1f}% of the target mass lands on v_max")


# %% [markdown]
# ## Change it yourself
#
# - The support: `--num-bins`, `--v-min`, `--v-max` in `Args`. With fewer atoms the projection is coarser; with a
#   narrower range more returns are clipped (rerun the cell above with `support = torch.linspace(-5, 5, 51)`).
# - The loss: `critic_loss` in `bro_mt.py` is BRC's cross-entropy; the MSE ablation is `mse_critic_loss` (with
#   `mse_q_value`), in the script's "Ablations and transfer" section, and `update` takes it as
#   `update(..., losses=MSE_LOSSES)`. Train with `--critic-loss mse` and `--no-reward-norm` (or
#   `Args(critic_loss="mse", reward_norm=False)` in notebook 5) to compare training runs.
# - The projection: `categorical_projection` is the one function every target goes through; its tests in
#   `tests/test_mt_units.py` compare it against a plain Python loop.

# %% [markdown]
# ## Exercise: write the projection yourself
#
# Write `my_projection(target_atoms, probs, support)` without looking at `categorical_projection`: for every row $b$
# and atom $j$, clip `target_atoms[b, j]` to $[v_{min}, v_{max}]$, compute its fractional index
# $(\hat z - v_{min}) / \Delta z$, and split `probs[b, j]` between the two support atoms around it, as in the
# formula above. A plain Python loop is fine. The next cell compares your function with the script's on random
# batches that include atoms beyond both ends of the support and atoms exactly on it. While your stub still raises
# `NotImplementedError` the check runs on the reference solution, `notebooks/solutions/01_categorical_critic.py`
# (read it after trying).


# %% tags=["exercise"]
def my_projection(target_atoms, probs, support):
    # YOUR CODE HERE: return the projected distribution, [batch, bins] like probs
    raise NotImplementedError


# %% tags=["check"]
answer = answer_or_solution(my_projection, "01_categorical_critic")
check_support = torch.linspace(-10, 10, 101)
generator = torch.Generator().manual_seed(0)
for trial in range(5):
    atoms = torch.randn(4, 101, generator=generator) * 8  # some beyond v_min and v_max
    atoms[:, ::10] = check_support[::10]  # some exactly on a support atom
    probs = torch.rand(4, 101, generator=generator).softmax(-1)
    expected = categorical_projection(atoms, probs, check_support)
    torch.testing.assert_close(answer(atoms, probs, check_support), expected, atol=1e-5, rtol=1e-4)
print("my_projection agrees with categorical_projection on 5 random batches")
