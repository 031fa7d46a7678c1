# %% [markdown]
# # 7. Tasks of different sizes in one network
#
# A cartpole has a 5-number observation and 1 action; a point mass 4 and 2; a dog 223 and 38. BRC trains **one**
# critic and **one** actor for all of them, so every tensor needs one width. This notebook shows, on two real tasks,
# how `bro_mt.py` makes them fit without letting the padding leak into learning:
#
# 1. observations are zero-padded to the largest task's size (`DMCEnv` in `brc_utils/envs.py`, `pad_to`);
# 2. the actor outputs the largest action size, and each task's **action mask** keeps only its own dims
#    (`action_masks_and_target_entropy`, `Actor.sample`);
# 3. $\log\pi(a|s)$ sums over the task's own dims only, and the **target entropy** is per task, $-|\mathcal A_i|/2$
#    (`temperature_loss`, `reward_scale`).
#
# The authors' released code pads observations and actions (it trains on tasks of equal action sizes in the paper);
# the masks are this implementation's addition, and with equal sizes they change nothing. The script explains it in
# one comment block, printed below.

# %%
import inspect
import os
import sys

# Import the real scripts from the repository root, whether Jupyter runs in notebooks/ or in the root.
ROOT = os.path.abspath(".." if os.path.exists(os.path.join("..", "bro_mt.py")) else ".")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))  # exercises.py

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from brc_utils.envs import DMCEnv
from bro_mt import Actor, Critic, action_masks_and_target_entropy, reward_scale, temperature_loss
from exercises import answer_or_solution

torch.manual_seed(0)
torch.set_num_threads(1)  # small networks: one thread is as fast and leaves the other cores free
plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (10, 3), "font.size": 12})
print(inspect.getcomments(action_masks_and_target_entropy))

# %% [markdown]
# ## Two real tasks, one observation width
#
# `main` builds each task's env with `pad_to=(obs_dim, action_dim)`, the largest sizes over all tasks. Here
# `cartpole-balance` (observation 5, action 1) and `point_mass-easy` (observation 4, action 2): every observation is 5
# numbers wide, the point mass's last one always 0, and every action 2 wide, of which the cartpole's env reads only
# the first.

# %%
TASKS = ["cartpole-balance", "point_mass-easy"]
sizes = [DMCEnv(task, seed=0) for task in TASKS]
obs_dim, action_dim = max(env.obs_size for env in sizes), max(env.action_size for env in sizes)
envs = [DMCEnv(task, seed=i, pad_to=(obs_dim, action_dim)) for i, task in enumerate(TASKS)]
for env in envs:
    obs, _ = env.reset(seed=0)
    print(f"{env.env_id:>17}: own sizes obs {env.obs_size}, act {env.action_size} -> padded observation {obs.round(3)}")
print(f"one network for both: obs_dim {obs_dim}, action_dim {action_dim}")

# A padded action dim is ignored by the env: the cartpole steps the same whatever the second number is.
twins = [DMCEnv("cartpole-balance", seed=0, pad_to=(obs_dim, action_dim)) for _ in range(2)]
for twin in twins:
    twin.reset(seed=0)
after = [twin.step(np.array([0.3, second], np.float32))[0] for twin, second in zip(twins, [-1.0, 1.0])]
print("cartpole after action [0.3, -1] and [0.3, +1]: the same next observation:", np.array_equal(*after))

# %% [markdown]
# ## Action masks and the per-task target entropy
#
# `action_masks_and_target_entropy(action_sizes, action_dim)` returns one row of 1s and 0s per task and the target
# entropy $-|\mathcal A_i|/2$ of each task. The mask multiplies every action wherever one is drawn or stored, so a
# padded dim is exactly 0 in the replay buffer and in the critic's input: the critic never sees noise there.

# %%
action_masks, target_entropy = action_masks_and_target_entropy([env.action_size for env in envs], action_dim, "cpu")
print("action masks:\n", action_masks.numpy())
print("target entropy per task:", target_entropy.numpy())

critic = Critic(obs_dim, action_dim, num_tasks=2, width=32)
actor = Actor(obs_dim, action_dim, critic.embedding_dim)
task_ids = torch.tensor([0] * 2000 + [1] * 2000)
obs = torch.as_tensor(np.stack([envs[i].reset(seed=0)[0] for i in task_ids.tolist()]))  # each task's first state
with torch.no_grad():
    embedding = critic.embed(task_ids)
    actions, log_probs = actor.sample(obs, embedding, action_masks[task_ids])
    _, log_probs_unmasked = actor.sample(obs, embedding, torch.ones_like(action_masks[task_ids]))

fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
for task, name in enumerate(TASKS):
    rows = task_ids == task
    for dim in range(action_dim):
        axes[task].hist(actions[rows, dim].numpy(), bins=40, range=(-1, 1), alpha=0.6, label=f"action dim {dim}")
    axes[task].set_title(f"{name}: sampled actions")
    axes[task].legend()
for task, name in enumerate(TASKS):
    rows = task_ids == task
    axes[2].hist(log_probs[rows].numpy(), bins=40, alpha=0.6, label=f"{name} (own dims)")
axes[2].hist(log_probs_unmasked[task_ids == 0].numpy(), bins=40, histtype="step", color="k", label="cartpole, unmasked")
axes[2].set_title("log π(a|s), untrained actor")
axes[2].legend(fontsize=10)
plt.tight_layout()
plt.show()
print("cartpole's padded action dim: all zero?", bool((actions[task_ids == 0, 1] == 0).all()))

# %% [markdown]
# Without the mask, the cartpole's $\log\pi$ would include the density of a second action dimension that does
# nothing (the black outline): the entropy bonus in the critic's target would reward the policy for being random in
# a dim that has no effect, and the temperature would be tuned to it. With the mask, each task's $\log\pi$ is that of
# the actions it really takes.
#
# ## The temperature: one α, per-task targets
#
# There is one temperature for all tasks. `temperature_loss` compares each sample's entropy $-\log\pi$ with **its
# own task's** target; a single target $-\max|\mathcal A|/2 = -1$ for everyone would ask the cartpole for less entropy
# than its own $-1/2$. Below, the gradient each task's samples put on $\log\alpha$, with the per-task targets and with
# a single shared target (positive: α falls).

# %%
log_alpha = torch.tensor(0.1).log().requires_grad_()
shared = torch.full_like(target_entropy, target_entropy.min().item())
for label, targets in [("per-task targets (BRC here)", target_entropy), ("one shared target -max|A|/2", shared)]:
    grads = []
    for task in range(2):
        rows = task_ids == task
        (grad,) = torch.autograd.grad(temperature_loss(log_alpha, log_probs[rows], targets[task_ids[rows]]), log_alpha)
        grads.append(grad.item())
    print(f"{label:>30}: d loss / d log α  cartpole {grads[0]:+.4f}, point mass {grads[1]:+.4f}")

scales = reward_scale(torch.tensor([50.0, 50.0]), torch.tensor(0.1), target_entropy, gamma=0.99)
print("reward divisors for the same Ḡ = 50:", scales.numpy().round(3), "(the entropy term grows with |A_i|)")


# %% [markdown]
# The untrained actor is far less random than either target (its log-std starts near -4), so every sample pushes α
# up. The shared target changes only the cartpole's push, by $\alpha\,(1 - 1/2) = 0.05$ per sample: it would hold the
# cartpole to the point mass's entropy target of $-1$ instead of its own $-1/2$. With 1 and 38 action dims (cartpole
# and dog) a shared target would be off by 18.5 nats for the cartpole. The reward divisor uses the same per-task
# target (notebook 4), so a task with more action dims gets a larger entropy term.

# %% [markdown]
# ## Exercise: the masked log-probability
#
# `Actor.sample` draws $u = \mu + \sigma\,\epsilon$ with $\epsilon \sim \mathcal N(0, 1)$, returns $a = \tanh(u)$
# (masked) and $\log\pi(a|s) = \sum_{d \in \text{task's dims}} \big[\log \mathcal N(u_d; \mu_d, \sigma_d) -
# \log(1 - \tanh^2 u_d)\big]$. Write `my_masked_log_prob(mean, log_std, noise, action_mask)` returning that sum,
# `[batch]`. Mind large $|u|$: $\log(1 - \tanh^2 u)$ underflows in float32, so write it another way. The check feeds
# your function the actor's own `mean`, `log_std` and the same noise `Actor.sample` drew, on random observations of
# both tasks. Solution: `notebooks/solutions/07_tasks_of_different_sizes.py`.


# %% tags=["exercise"]
def my_masked_log_prob(mean, log_std, noise, action_mask):
    # YOUR CODE HERE: return a tensor [batch]
    raise NotImplementedError


# %% tags=["check"]
answer = answer_or_solution(my_masked_log_prob, "07_tasks_of_different_sizes")
torch.manual_seed(0)
check_actor = Actor(obs_dim=5, action_dim=2, embedding_dim=32)
check_obs, check_embedding = torch.randn(64, 5) * 3, F.normalize(torch.randn(64, 32), dim=-1)
check_masks, _ = action_masks_and_target_entropy([1, 2], 2, "cpu")
check_mask = check_masks[torch.randint(0, 2, (64,))]
torch.manual_seed(1)
_, reference = check_actor.sample(check_obs, check_embedding, check_mask)
with torch.no_grad():
    check_mean, check_log_std = check_actor(check_obs, check_embedding)
torch.manual_seed(1)
check_noise = torch.randn_like(check_mean)  # the noise sample() drew
torch.testing.assert_close(answer(check_mean, check_log_std, check_noise, check_mask), reference.detach())
print("my_masked_log_prob agrees with Actor.sample on 64 random samples of both tasks")
