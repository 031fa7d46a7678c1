# %% [markdown]
# # 4. Per-task reward normalisation
#
# The categorical critic can only represent returns in $[-10, 10]$ (notebook 1), and different tasks pay rewards on
# very different scales. BRC divides every task's rewards by its own scale, computed from the **largest discounted
# return seen on that task**, so that every task's returns fill the same support. This notebook walks through the rule
# step by step on real episodes of two tasks, with the real `RewardNormalizer`:
#
# $$G_t = r_t + \gamma\, G_{t+1}, \qquad G_T = \begin{cases} 0 & \text{termination} \\ \mathrm{mean}(r)/(1-\gamma) & \text{time-limit cut}\end{cases}$$
# $$\bar G_i = \max\big(G^{max}_i,\ |G^{min}_i|\big), \qquad
# \text{scale}_i = \frac{\bar G_i + \alpha\,|\mathcal H^{target}_i| / \big(2(1-\gamma)\big)}{10}, \qquad
# \tilde r = r / \text{scale}_i$$
#
# where $G^{max}_i, G^{min}_i$ are the largest and smallest returns-to-go of any finished episode of task $i$.
#
# Where to look in `bro_mt.py`: `returns_to_go`, `RewardNormalizer` (`record`, `end_episode`, `max_abs_return`,
# `needs_fallback`), `reward_scale`; in `main`, the *record* phase calls `record`/`end_episode` and the *update* phase
# refreshes the scale; `critic_loss` divides the sampled rewards. The replay buffer stores raw rewards, so the scale
# applied is always the current one.

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
from bro_mt import Args, RewardNormalizer, returns_to_go, reward_scale
from exercises import answer_or_solution

plt.rcParams.update(
    {"figure.dpi": 72, "figure.figsize": (10, 3), "axes.grid": True, "grid.alpha": 0.3, "font.size": 12}
)
args = Args()
gamma = args.gamma
TASKS = ["cartpole-balance", "cartpole-swingup"]
envs = [DMCEnv(task, seed=i, max_episode_steps=300) for i, task in enumerate(TASKS)]
rng = np.random.default_rng(0)


def play_episode(env):
    # One episode with uniformly random actions: its rewards and whether it ended by termination.
    env.reset()
    rewards, done = [], False
    while not done:
        _, reward, terminated, truncated, _ = env.step(rng.uniform(-1, 1, env.action_space.shape))
        rewards.append(reward)
        done = terminated or truncated
    return np.array(rewards), terminated


# %% [markdown]
# ## Step 1: real episodes of two tasks
#
# Same body, two tasks: `cartpole-balance` starts upright and pays for keeping the pole up; `cartpole-swingup` starts
# hanging down and pays almost nothing until the pole gets near the top. With random actions their rewards differ by
# a factor of about 50. Episodes are cut at 300 steps (a time limit, not a termination).

# %%
episodes = [play_episode(env) for env in envs]
fig, axes = plt.subplots(1, 2, figsize=(11, 3.2))
for ax, task, (rewards, terminated) in zip(axes, TASKS, episodes):
    ax.plot(rewards)
    ax.set_title(f"{task}: mean reward {rewards.mean():.3f}\n{'terminated' if terminated else 'cut by the time limit'}")
    ax.set_xlabel("step")
axes[0].set_ylabel("reward")
plt.show()

# %% [markdown]
# ## Step 2: discounted returns-to-go, and the tail of a cut episode
#
# `returns_to_go(rewards, gamma, bootstrap)` runs $G_t = r_t + \gamma G_{t+1}$ backwards from $G_T$ = `bootstrap`.
# An episode cut by the time limit has not ended for the task: the agent would have kept collecting rewards. BRC
# estimates that tail as if the mean reward went on forever, $\mathrm{mean}(r)/(1-\gamma)$. Without it, the last
# returns-to-go of every cut episode would fall to 0 and mix "the end is near" into the statistics.

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 2.8))
for ax, task, (rewards, terminated) in zip(axes, TASKS, episodes):
    tail = 0.0 if terminated else rewards.mean() / (1 - gamma)
    ax.plot(returns_to_go(rewards, gamma, tail), label=f"tail = mean(r)/(1−γ) = {tail:.1f}")
    ax.plot(returns_to_go(rewards, gamma, 0.0), "--", label="tail = 0")
    ax.set_title(task)
    ax.set_xlabel("step t")
    ax.legend()
axes[0].set_ylabel("return-to-go $G_t$")
plt.show()

# %% [markdown]
# ## Step 3: the normaliser's statistics
#
# `main` calls `normalizer.record(task, reward)` after every environment step and `normalizer.end_episode(task,
# terminated)` when an episode ends; `end_episode` computes the returns-to-go above and keeps the extremes
# (in float64).

# %%
normalizer = RewardNormalizer(num_tasks=2, gamma=gamma)
for task, (rewards, terminated) in enumerate(episodes):
    for reward in rewards:
        normalizer.record(task, reward)
    normalizer.end_episode(task, terminated)
for task, name in enumerate(TASKS):
    print(
        f"{name:>17}: G_max {normalizer.max_return[task]:7.2f}  G_min {normalizer.min_return[task]:6.2f}  "
        f"G_bar {normalizer.max_abs_return()[task]:7.2f}"
    )

# %% [markdown]
# ## Step 4: the entropy correction
#
# SAC's critic does not learn the plain return but the *soft* return: its target adds $-\alpha \log\pi(a'|s')$ at
# every step (notebook 1). The temperature is tuned so that the policy's entropy stays near
# $\mathcal H^{target} = -|\mathcal A|/2$, so the entropy terms add up to about $\alpha\,|\mathcal H^{target}|/(1-\gamma)$
# in magnitude. BRC's scale adds half of that to $\bar G$ (the authors' released rule), which
#
# - keeps the soft returns inside the support, and
# - keeps the divisor away from zero for a task whose rewards are still tiny (a sparse task that has seen no reward),
#   so that its first small reward is not blown up to a huge normalised value.
#
# `reward_scale` computes it with the current $\alpha$, so the scale moves as the temperature is learned. Both cartpole
# tasks have one action dimension, $\mathcal H^{target} = -0.5$.

# %%
g_bar = torch.as_tensor(normalizer.max_abs_return(), dtype=torch.float32)
target_entropy = torch.tensor([-0.5, -0.5])  # -|A|/2
alphas = torch.logspace(-3, 0, 50)
scales = torch.stack([reward_scale(g_bar, alpha, target_entropy, gamma) for alpha in alphas])  # [alphas, tasks]
plt.figure(figsize=(6, 3))
for task, name in enumerate(TASKS):
    (line,) = plt.loglog(alphas, scales[:, task], label=name)
    plt.axhline(g_bar[task] / 10, color=line.get_color(), ls=":", lw=1)
plt.axvline(args.init_temperature, color="gray", ls="--", label="α₀ = 0.1")
plt.xlabel("temperature α")
plt.ylabel("reward divisor (scale)")
plt.legend()
plt.title("dotted: without the entropy term")
plt.show()
scale = reward_scale(g_bar, torch.tensor(args.init_temperature), target_entropy, gamma)
print("at α = 0.1: entropy term", round(0.1 * 0.5 / (2 * (1 - gamma)), 2), "| scale", scale.numpy().round(3))

# %% [markdown]
# ## Step 5: what the critic sees
#
# Divided by their scales, both tasks' returns land inside the support, whatever their raw size. They do not both
# reach 10: for `cartpole-balance` $\bar G$ dominates the divisor and its best return maps to just under 10; for
# `cartpole-swingup` the rewards so far are smaller than the entropy term, so the entropy term dominates and its
# returns stay a few units high. That is intended: for such a task most of the soft return the critic must predict *is*
# entropy bonus, and the divisor leaves room for it.

# %%
plt.figure(figsize=(8, 3))
for task, (name, (rewards, terminated)) in enumerate(zip(TASKS, episodes)):
    tail = 0.0 if terminated else rewards.mean() / (1 - gamma)
    plt.plot(returns_to_go(rewards / scale[task].item(), gamma, tail / scale[task].item()), label=name)
plt.axhline(args.v_max, color="k", ls=":", label="v_max")
plt.ylim(-0.5, 11)
plt.xlabel("step t")
plt.ylabel("normalised return-to-go")
plt.legend()
plt.show()

# %% [markdown]
# ## Step 6: the statistics only grow
#
# $G^{max}$ and $G^{min}$ are extremes over *all* finished episodes, so $\bar G$ never shrinks. As the policy improves
# and collects more reward, the scale grows and the critic's targets shrink accordingly: the normalised returns stay
# inside the support while the task gets solved. Here with five more random episodes per task:

# %%
history = [normalizer.max_abs_return().copy()]
for episode in range(5):
    for task, env in enumerate(envs):
        rewards, terminated = play_episode(env)
        for reward in rewards:
            normalizer.record(task, reward)
        normalizer.end_episode(task, terminated)
    history.append(normalizer.max_abs_return().copy())
history = np.array(history)
fig, axes = plt.subplots(1, 2, figsize=(10, 2.6))
for ax, task, name in zip(axes, range(2), TASKS):
    ax.step(range(1, len(history) + 1), history[:, task], where="post")
    ax.set_title(name)
    ax.set_xlabel("episodes finished")
axes[0].set_ylabel("$\\bar G$")
plt.show()

# %% [markdown]
# ## Step 7: before the first episode ends
#
# Until a task finishes its first episode, $G^{max}_i = -\infty$: there is nothing to normalise with. The authors'
# released code then divides by infinity, so **every reward of that task becomes 0** and the critic learns that the
# task pays nothing until the episode ends. With the paper's settings (5 000 random steps, 1 000-step episodes) every
# task has finished several episodes before the first update, but with a short warm-up or long episodes it matters.
#
# `bro_mt.py` uses a documented fallback instead: until the first episode ends, `max_abs_return` treats the episode
# so far as if it were cut now (tail bootstrap included) and uses its $\bar G$. `main` recomputes every task's scale
# once per environment step, before that step's updates (`learn`), so the estimate follows the episode as it grows;
# `needs_fallback()` says whether any task is still in this state (`bro_atari.py`'s loop uses it to decide when to
# refresh its scales). Below, the fallback's $\bar G$ step by step through a
# task's first episode, against the value after the episode ends.

# %%
fresh = RewardNormalizer(num_tasks=2, gamma=gamma)
first_episodes = [play_episode(env) for env in envs]
fallback = [[], []]
print("needs_fallback before any step:", fresh.needs_fallback())
for task, (rewards, terminated) in enumerate(first_episodes):
    for reward in rewards:
        fresh.record(task, reward)
        fallback[task].append(fresh.max_abs_return()[task])
    print(f"{TASKS[task]}: needs_fallback during its first episode: {fresh.needs_fallback()}")
    fresh.end_episode(task, terminated)
print("needs_fallback once both have finished one:", fresh.needs_fallback())

fig, axes = plt.subplots(1, 2, figsize=(11, 2.8))
for ax, task, name in zip(axes, range(2), TASKS):
    ax.plot(fallback[task], label="fallback: episode so far, cut now")
    ax.axhline(fresh.max_abs_return()[task], color="k", ls="--", label="after the episode ends")
    ax.set_title(name)
    ax.set_xlabel("steps into the first episode")
axes[0].set_ylabel("$\\bar G$ used for the scale")
fig.tight_layout()
# One legend for both panels, under them: inside either panel it would cover the curve.
fig.legend(*axes[0].get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2)
plt.show()


# %% [markdown]
# From the first step the fallback is of the right order of magnitude (the running mean reward over $1-\gamma$ is
# already a rough guess of a return), so the critic learns from real, sensibly scaled rewards instead of zeros. For
# `cartpole-swingup`, $\bar G$ is 0 until the first reward arrives: the divisor is then the entropy term alone, which
# is one more reason for that term. The tests in
# `tests/test_mt_units.py` check this fallback against a hand computation.
#
# ## Change it yourself
#
# - Train without normalisation, `--no-reward-norm` (`Args(reward_norm=False)` in notebook 5): each task's raw
#   returns must then fit in [-10, 10], and a task with larger rewards saturates the support (notebook 1 shows what
#   that does to its targets).
# - Drop the entropy term in `reward_scale` and watch a sparse task's scale before its first reward.
# - Try the released rule: make `max_abs_return` return `inf` for tasks without a finished episode.

# %% [markdown]
# ## Exercise: returns-to-go
#
# Write `my_returns_to_go(rewards, gamma, bootstrap)`: the discounted returns-to-go of one episode as a NumPy array,
# $G_t = r_t + \gamma G_{t+1}$ with $G_T$ = `bootstrap` after the last reward (step 2 above). The check compares it
# with `returns_to_go` on random episodes of random lengths, discounts and tails. Solution:
# `notebooks/solutions/04_reward_normalisation.py`.


# %% tags=["exercise"]
def my_returns_to_go(rewards, gamma, bootstrap):
    # YOUR CODE HERE: return an array of len(rewards) returns
    raise NotImplementedError


# %% tags=["check"]
answer = answer_or_solution(my_returns_to_go, "04_reward_normalisation")
check_rng = np.random.default_rng(0)
for trial in range(20):
    rewards = check_rng.normal(size=check_rng.integers(1, 50))
    gamma_, bootstrap = check_rng.uniform(0.5, 0.999), check_rng.normal() * 10
    np.testing.assert_allclose(answer(rewards, gamma_, bootstrap), returns_to_go(rewards, gamma_, bootstrap), rtol=1e-9)
print("my_returns_to_go agrees with returns_to_go on 20 random episodes")
