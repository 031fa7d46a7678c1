# %% [markdown]
# # 2. BroNet and model size
#
# The "Bigger, Regularized" in BRC is **BroNet** (Nauman et al., 2024): an MLP whose hidden layers are LayerNorm
# residual blocks, made wide. BRC's finding is that this critic keeps getting better as it grows, up to ~1B
# parameters, when it is trained on many tasks at once. This notebook shows:
#
# 1. the architecture, built from `bro_mt.py`, and what LayerNorm does to inputs of very different scales;
# 2. the exact parameter count of every `--model-size` preset;
# 3. a small, honest experiment: critics of three widths fit the returns of four tasks from the same data.
#
# Where to look in `bro_mt.py`: `BroNetBlock`, `BroNet`, `EnsembleLinear`, `EnsembleLayerNorm`, `Critic`, `Actor`,
# `MODEL_SIZES`, `CRITIC_DEPTH`, `model_parameter_counts`.

# %%
import os
import sys

# Import the real scripts from the repository root, whether Jupyter runs in notebooks/ or in the root.
ROOT = os.path.abspath(".." if os.path.exists(os.path.join("..", "bro_mt.py")) else ".")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))  # exercises.py

import time

import matplotlib.pyplot as plt
import numpy as np
import torch

from brc_utils.envs import DMCEnv
from bro_mt import (
    ACTOR_DEPTH,
    ACTOR_WIDTH,
    CRITIC_DEPTH,
    ENSEMBLE_SIZE,
    MODEL_SIZES,
    Args,
    BroNet,
    BroNetBlock,
    Critic,
    RewardNormalizer,
    categorical_projection,
    model_parameter_counts,
    q_value,
    returns_to_go,
)
from exercises import answer_or_solution

torch.manual_seed(0)
torch.set_num_threads(1)  # small networks: one thread is as fast and leaves the other cores free
plt.rcParams.update(
    {"figure.dpi": 72, "figure.figsize": (10, 3), "axes.grid": True, "grid.alpha": 0.3, "font.size": 12}
)

# %% [markdown]
# ## The architecture
#
# $$h_0 = \mathrm{ReLU}(\mathrm{LN}(W_0 x)), \qquad
# h_{k+1} = h_k + \mathrm{LN}\big(W_{k,2}\,\mathrm{ReLU}(\mathrm{LN}(W_{k,1} h_k))\big), \quad k = 0 .. \text{depth}-1$$
#
# The critic is `BroNet(members=2, in_features=..., width=W, depth=2)` followed by a linear layer to the 101 logits
# (notebook 1); its input is `[obs, action, task_embedding]` (notebook 3). The actor is
# `BroNet(members=1, in_features=..., width=256, depth=1)` with two heads (mean and log-std).
# Both critic members live in the same tensors: every `EnsembleLinear` holds a weight `[members, in, out]` and runs
# all members in one `torch.baddbmm`, which is what `jax.vmap` compiles to in the authors' code.

# %%
critic = Critic(obs_dim=24, action_dim=6, num_tasks=4, width=64)
print(critic)
print(f"\ncritic depth {CRITIC_DEPTH}, ensemble of {ENSEMBLE_SIZE}; actor width {ACTOR_WIDTH}, depth {ACTOR_DEPTH}")
print("first layer's weight:", tuple(critic.trunk.linear.weight.shape), "= [members, in (24 + 6 + 32), width]")

# %% [markdown]
# **Why LayerNorm.** A multi-task critic sees observations of very different sizes and scales (joint angles in
# radians, velocities in tens, a dog's 223 numbers next to a cartpole's 5). LayerNorm right after the first layer
# rescales every sample's features to zero mean and unit variance, so the rest of the network sees the same scale
# whatever the input; the LayerNorm inside each block does the same for the residual branch, so stacking blocks and
# widening them does not blow activations up. Below: the same BroNet on the same random inputs multiplied by 1, 10
# and 100, against the first linear layer alone.

# %%
net = BroNet(members=1, in_features=24, width=256, depth=2)
x = torch.randn(1, 512, 24)
with torch.no_grad():
    for factor in [1, 10, 100]:
        first_linear = net.linear(factor * x)
        out = net(factor * x)
        print(
            f"input ×{factor:<4} first Linear: std {first_linear.std():7.2f}   BroNet output: std {out.std():5.2f}, "
            f"mean |h| {out.abs().mean():5.2f}"
        )

# %% [markdown]
# ## Parameter counts of every preset
#
# `--model-size` picks the critic's width $W$: 1M→512 … 1B→16384. The label is about $4W^2$: the weights of one
# member's four hidden $W\times W$ layers (two blocks of two). `model_parameter_counts` builds the networks on PyTorch's
# `meta` device, so even the 1B preset allocates nothing. Here for the paper's task set (`DMC_HARD`: dogs and
# humanoids; observations padded to the dog's 223 numbers, actions to its 38).

# %%
dog, humanoid = DMCEnv("dog-run", seed=0), DMCEnv("humanoid-run", seed=0)
obs_dim = max(dog.observation_space.shape[0], humanoid.observation_space.shape[0])
action_dim = max(dog.action_space.shape[0], humanoid.action_space.shape[0])
print(f"obs {obs_dim}, actions {action_dim}, 7 tasks\n")
print(
    f"{'preset':>6} {'width':>6} {'4·W²':>14} {'one member':>14} {'ensemble of 2':>14} {'actor':>9} {'weights+AdamW':>14}"
)
counts = {}
for name, width in MODEL_SIZES.items():
    counts[name] = c = model_parameter_counts(obs_dim, action_dim, num_tasks=7, width=width)
    # float32 weights, target copy, gradients and two AdamW moments: ~5 copies of the critic (main's memory check)
    gib = 4 * 5 * c["critic_ensemble"] / 2**30
    print(
        f"{name:>6} {width:>6} {4 * width**2:>14,} {c['critic_member']:>14,} {c['critic_ensemble']:>14,} {c['actor']:>9,} {gib:>11.2f} GiB"
    )

widths = np.array(list(MODEL_SIZES.values()))
plt.figure(figsize=(5, 3))
plt.loglog(widths, [c["critic_member"] for c in counts.values()], "o-", label="one critic member (exact)")
plt.loglog(widths, 4 * widths**2, "k--", label="4·W²")
plt.loglog(widths, [c["actor"] for c in counts.values()], "s-", label="actor (fixed width 256)")
plt.xlabel("critic width W")
plt.ylabel("parameters")
plt.legend()
plt.show()

# %% [markdown]
# The input and output layers add $W\cdot(223 + 38 + 32) + 101\,W$ parameters, which matter only for the small presets;
# from 16M on the label is within 5 %. The actor stays small at every preset: BRC scales the critic, not
# the policy. The last column is the memory of the critic's weights, target copy, gradients and AdamW moments
# alone, before activations and replay: 40 GiB at 1B.
#
# ## What a bigger critic buys: a small experiment
#
# A full BRC run per width does not fit in a notebook on a CPU, so we test one narrower claim that we can afford:
# **from the same data, does a wider critic fit the values of several tasks better and faster?**
#
# - Data: random-action episodes of four dm_control tasks with different bodies and reward scales (250 steps each,
#   8 episodes per task). The regression target of every transition is its discounted return-to-go, computed by
#   `returns_to_go` with the same tail bootstrap `RewardNormalizer` uses for a time-limit cut, then divided by
#   $\bar G_i/10$ of its task so that all four tasks span the same part of the support.
# - Model and loss: a `Critic` of width 16, 64 or 256 with task embeddings, trained with the critic's cross-entropy
#   against the two-atom projection of the target (`categorical_projection`), AdamW(3e-4, weight decay 1e-4) as in
#   the script, batch 256, 400 steps, same seed.
# - Measured: the mean absolute error of the predicted Q on the training episodes and on 2 held-out episodes per task
#   (in support units, where the returns span [0, 10]), every 25 steps; and the wall time per step.

# %%
TASKS = ["cartpole-balance", "cartpole-swingup", "walker-stand", "fish-upright"]
gamma, rng = Args().gamma, np.random.default_rng(0)
envs = [DMCEnv(task, seed=i, max_episode_steps=250) for i, task in enumerate(TASKS)]
obs_dim = max(env.observation_space.shape[0] for env in envs)
action_dim = max(env.action_space.shape[0] for env in envs)
normalizer = RewardNormalizer(len(TASKS), gamma)
rows = []  # (task, episode, padded obs, padded action, return-to-go)
for task, env in enumerate(envs):
    for episode in range(8):
        obs, _ = env.reset()
        steps, done = [], False
        while not done:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            next_obs, reward, terminated, truncated, _ = env.step(action)
            normalizer.record(task, reward)
            steps.append((np.pad(obs, (0, obs_dim - len(obs))), np.pad(action, (0, action_dim - len(action))), reward))
            obs, done = next_obs, terminated or truncated
        rewards = np.array([r for _, _, r in steps])
        tail = 0.0 if terminated else rewards.mean() / (1 - gamma)  # RewardNormalizer's rule for a time-limit cut
        for (o, a, _), g in zip(steps, returns_to_go(rewards, gamma, tail)):
            rows.append((task, episode, o, a, g))
        normalizer.end_episode(task, terminated)

task_ids = torch.tensor([r[0] for r in rows])
episodes = torch.tensor([r[1] for r in rows])
obs = torch.tensor(np.stack([r[2] for r in rows]))
actions = torch.tensor(np.stack([r[3] for r in rows]))
g_bar = torch.tensor(normalizer.max_abs_return(), dtype=torch.float32)
returns = torch.tensor([r[4] for r in rows], dtype=torch.float32) / (g_bar / 10)[task_ids]  # in support units
support = torch.linspace(-10, 10, 101)
uniform = torch.full((len(returns), len(support)), 1 / len(support))
target_probs = categorical_projection(returns[:, None].expand(-1, len(support)), uniform, support)  # two-atom targets
held_out = episodes >= 6
train_idx, test_idx = (~held_out).nonzero()[:, 0], held_out.nonzero()[:, 0]
print(
    f"{len(train_idx)} training and {len(test_idx)} held-out transitions; G_bar per task:",
    {t: round(float(g), 1) for t, g in zip(TASKS, g_bar)},
)


# %%
def value_error(critic, idx):
    with torch.no_grad():
        q = q_value(critic(obs[idx], actions[idx], task_ids[idx]), support)
    return (q - returns[idx]).abs().mean().item()


curves, seconds_per_step = {}, {}
for width in [16, 64, 256]:
    torch.manual_seed(0)
    critic = Critic(obs_dim, action_dim, len(TASKS), width)
    optimizer = torch.optim.AdamW(critic.parameters(), lr=3e-4, weight_decay=1e-4)
    curve, start = [], time.time()
    for step in range(401):
        if step % 25 == 0:
            curve.append((step, value_error(critic, train_idx[:2000]), value_error(critic, test_idx)))
        idx = train_idx[torch.randint(len(train_idx), (256,))]
        logits = critic(obs[idx], actions[idx], task_ids[idx])  # [members, batch, bins]
        loss = -(target_probs[idx] * logits.log_softmax(-1)).sum(-1).mean(-1).sum()  # critic_loss's cross-entropy
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    curves[width], seconds_per_step[width] = np.array(curve), (time.time() - start) / 400
    params = model_parameter_counts(obs_dim, action_dim, len(TASKS), width)["critic_member"]
    print(
        f"width {width:>4} ({params:>7,} parameters per member): train error {curve[-1][1]:.2f}, held-out "
        f"{curve[-1][2]:.2f}, {1000 * seconds_per_step[width]:.0f} ms per step"
    )

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), sharey=True)
for width, curve in curves.items():
    axes[0].plot(curve[:, 0], curve[:, 1], label=f"width {width}")
    axes[1].plot(curve[:, 0], curve[:, 2], label=f"width {width}")
axes[0].set_title("training episodes")
axes[1].set_title("held-out episodes")
for ax in axes:
    ax.set_xlabel("gradient step")
    ax.legend()
axes[0].set_ylabel("mean |Q − return| (support units)")
plt.show()


# %% [markdown]
# **What this shows.** On the same data, with the same optimiser and number of steps, the wider critics reduce
# the value error much faster and end lower, on the training episodes and on the held-out ones. On these tiny widths a
# larger critic is simply a better function fitter per gradient step.
#
# **What it does not show.** This is supervised regression of a random policy's returns, not reinforcement learning:
# there is no bootstrapping, no moving target, no exploration, no policy improvement. The gap between training and
# held-out error also grows with width: on a fixed dataset of 6 000 transitions a big network starts to memorise,
# which in a real run is held back by fresh data, LayerNorm and weight decay. And bigger costs compute: the last
# column above, multiplied by millions of updates. The paper's claims (bigger critics keep helping up to ~1B
# parameters; a multi-task critic beats single-task ones) come from full GPU runs; see `README.md` for the commands.
#
# ## Change it yourself
#
# - Try `--model-size 1M` against `--critic-width 128` in notebook 5's run, or here add 1024 to the widths (slow on a CPU).
# - Change `CRITIC_DEPTH` (number of residual blocks) or remove the LayerNorms from `BroNetBlock` and rerun the
#   scale check above: without them the output grows with the input.

# %% [markdown]
# ## Exercise: a BroNet block without LayerNorm
#
# Write `my_block_without_layernorm(block, x)`: the forward pass of a `BroNetBlock` with both LayerNorms left out,
# $x + W_2\,\mathrm{ReLU}(W_1 x + b_1) + b_2$, using the weights of `block` (`block.linear1.weight` is
# `[members, in, out]`, its bias `[members, 1, out]`; `x` is `[members, batch, width]`). The check compares it with the
# script's own block whose two LayerNorms are replaced by identities, on random inputs, and then stacks four blocks
# with and without LayerNorm to show what the norms are for. Solution: `notebooks/solutions/02_bronet_model_size.py`.


# %% tags=["exercise"]
def my_block_without_layernorm(block, x):
    # YOUR CODE HERE: return a tensor shaped like x
    raise NotImplementedError


# %% tags=["check"]
import copy

answer = answer_or_solution(my_block_without_layernorm, "02_bronet_model_size")
torch.manual_seed(0)
block = BroNetBlock(members=2, width=16)
without_norms = copy.deepcopy(block)
without_norms.norm1 = without_norms.norm2 = torch.nn.Identity()  # the script's block, LayerNorms left out
x = torch.randn(2, 8, 16)
with torch.no_grad():
    torch.testing.assert_close(answer(block, x), without_norms(x))
    print("my_block_without_layernorm agrees with BroNetBlock minus its LayerNorms")
    blocks = [BroNetBlock(members=1, width=256) for _ in range(4)]
    for factor in [1, 10, 100]:
        h_norm = h_plain = factor * torch.randn(1, 512, 256)
        for b in blocks:
            h_norm, h_plain = b(h_norm), answer(b, h_plain)
        print(
            f"input std {factor:>3}: after 4 blocks, with LayerNorm {h_norm.std():8.1f}, without {h_plain.std():8.1f}"
        )
