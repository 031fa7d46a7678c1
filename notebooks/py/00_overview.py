# %% [markdown]
# # 0. BRC at a glance
#
# BRC ("Bigger, Regularized, Categorical", Nauman et al., 2025) is SAC with three changes to the critic, which let
# **one** agent learn many tasks at once:
#
# - **Bigger, Regularized**: the critic is a wide BroNet (LayerNorm residual blocks, weight decay), an ensemble of two;
# - **Categorical**: it predicts a distribution over 101 fixed return values and is trained with cross-entropy;
# - **multi-task**: a learnable task embedding tells it the task, and each task's rewards are normalised to one scale.
#
# This notebook is the map: a figure of the networks, one BRC update as pseudo-code with each line linked to the
# function of `bro_mt.py` that does it, and a table from each idea of the paper to its code. The other notebooks
# take the pieces apart, one each:
#
# | notebook | piece |
# |---|---|
# | 01 | the categorical critic, the C51 projection, cross-entropy versus MSE |
# | 02 | BroNet, LayerNorm, model size |
# | 03 | task embeddings, the detached copy the actor reads |
# | 04 | per-task reward normalisation |
# | 05 | the training loop, run for real |
# | 06 | Atari (`bro_atari.py`) |
# | 07 | tasks of different sizes in one network |

# %%
import inspect
import os
import sys

# Import the real scripts from the repository root, whether Jupyter runs in notebooks/ or in the root.
ROOT = os.path.abspath(".." if os.path.exists(os.path.join("..", "bro_mt.py")) else ".")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))  # exercises.py

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display
from matplotlib.patches import FancyBboxPatch

import bro_mt
from brc_utils import envs as env_utils
from bro_mt import ACTOR_WIDTH, CRITIC_DEPTH, ENSEMBLE_SIZE, Actor, Args, Critic, q_value
from exercises import answer_or_solution

torch.manual_seed(0)
torch.set_num_threads(1)  # small networks: one thread is as fast and leaves the other cores free
plt.rcParams.update({"figure.dpi": 72, "font.size": 12})

# %% [markdown]
# ## The networks
#
# A real `Critic` and `Actor`, built small (width 64) for two tasks with 5-number observations and 1 action, give the
# shapes in the figure. The critic reads `[obs, action, e_i]`, where $e_i$ is the task's unit-length embedding
# (`Critic.embed`); each of its two members is a BroNet ending in 101 logits; the members' softmaxes are averaged and
# Q is the expectation of that mean distribution (`q_value`). The actor reads `[obs, e_i]` with $e_i$ **detached**:
# the embedding belongs to the critic and only the critic's loss trains it (notebook 3).

# %%
args = Args()
critic = Critic(obs_dim=5, action_dim=1, num_tasks=2, width=64)
actor = Actor(obs_dim=5, action_dim=1, embedding_dim=critic.embedding_dim)
obs, action, task_ids = torch.randn(3, 5), torch.rand(3, 1) * 2 - 1, torch.tensor([0, 1, 1])
with torch.no_grad():
    logits = critic(obs, action, task_ids)  # [members, batch, bins]
    q = q_value(logits, torch.linspace(args.v_min, args.v_max, args.num_bins))
    mean, log_std = actor(obs, critic.embed(task_ids))
print("critic input:", 5 + 1 + critic.embedding_dim, "numbers = obs 5 + action 1 + embedding", critic.embedding_dim)
print("critic output (logits):", tuple(logits.shape), "= [members, batch, bins]; Q:", tuple(q.shape))
print("actor output: mean", tuple(mean.shape), "and log-std", tuple(log_std.shape))


# %%
def box(ax, x, y, text, color, width=2.3, height=0.9):
    ax.add_patch(FancyBboxPatch((x - width / 2, y - height / 2), width, height, boxstyle="round,pad=0.08", fc=color))
    ax.text(x, y, text, ha="center", va="center", fontsize=12)


def arrow(ax, start, end, style="-|>", color="k", dashed=False):
    ax.annotate("", end, start, arrowprops=dict(arrowstyle=style, color=color, lw=1.6, ls="--" if dashed else "-"))


fig, ax = plt.subplots(figsize=(15, 6.5))
ax.set_xlim(0, 15.5)
ax.set_ylim(0, 7)
ax.axis("off")
inputs, embed, member, head, out = "#dde8f7", "#f7e3c6", "#d9f0d3", "#eadcf2", "#f6d5d5"
box(ax, 1.3, 6.0, "observation s\n(zero-padded)", inputs)
box(ax, 1.3, 4.6, "action a\n(masked)", inputs)
box(ax, 1.3, 2.6, "task id i", inputs, height=0.7)
box(ax, 4.1, 2.6, f"embedding table\n[tasks, {critic.embedding_dim}]\ne_i = E_i / |E_i|", embed, height=1.3)
box(ax, 7.0, 5.9, f"BroNet member 1\nwidth W, {CRITIC_DEPTH} blocks", member)
box(ax, 7.0, 4.5, f"BroNet member 2\nwidth W, {CRITIC_DEPTH} blocks", member)
box(ax, 9.9, 5.9, f"{args.num_bins} logits\nsoftmax", head, width=1.9)
box(ax, 9.9, 4.5, f"{args.num_bins} logits\nsoftmax", head, width=1.9)
box(ax, 12.3, 5.2, "mean of the\nmembers'\ndistributions", out, width=1.9, height=1.3)
box(ax, 14.5, 5.2, "Q(s, a, i)\n= Σ z_j p̄_j", out, width=1.7)
box(ax, 7.0, 1.6, f"actor: BroNet, 1 member\nwidth {ACTOR_WIDTH}, reads [s, sg(e_i)]", member, width=3.2, height=1.0)
box(ax, 11.0, 1.6, "tanh-Gaussian π(a | s, i)\nover the task's own dims", out, width=3.2, height=1.0)
ax.text(4.6, 5.25, "[s, a, e_i]", fontsize=12, ha="center")
for y in (6.0, 4.6):
    arrow(ax, (2.5, y), (5.75, 5.2))
arrow(ax, (2.5, 2.6), (2.85, 2.6))
arrow(ax, (5.2, 3.1), (5.75, 5.1))
arrow(ax, (5.75, 5.2), (5.8, 5.9))
arrow(ax, (5.75, 5.2), (5.8, 4.5))
for y in (5.9, 4.5):
    arrow(ax, (8.2, y), (8.9, y))
    arrow(ax, (10.9, y), (11.3, 5.2))
arrow(ax, (13.3, 5.2), (13.6, 5.2))
arrow(ax, (4.6, 1.95), (5.35, 1.7), color="C3", dashed=True)
ax.text(4.1, 0.75, "detached: no gradient\nfrom the actor", color="C3", fontsize=11, ha="center")
arrow(ax, (2.5, 5.8), (5.35, 1.9), color="gray")
arrow(ax, (8.65, 1.6), (9.35, 1.6))
ax.set_title(f"BRC's networks (critic: an ensemble of {ENSEMBLE_SIZE}; W = 4096 for the paper's 64M preset)")
plt.show()

# %% [markdown]
# ## One BRC update, and the loop around it
#
# Every environment step, all tasks step once and `updates_per_step` (2) updates follow; each update draws one batch
# mixing all tasks. The table is built from the script itself (`inspect`), so its links point at today's line numbers.

# %%
PSEUDO_CODE = [
    ("every environment step:", "main"),
    ("  a_i ~ π(· | s_i, sg(e_i)) for all tasks at once (random actions before learning starts)", "Actor.sample"),
    ("  step every task's env with its own action dims; observations zero-padded", "DMCEnv.step"),
    ("  record each reward; at an episode's end update G_max, G_min of its task", "RewardNormalizer.end_episode"),
    ("  store one transition per task (raw rewards)", "ReplayBuffer.add"),
    ("  scale_i = (Ḡ_i + α·|H_target,i| / (2(1-γ))) / 10 for every task", "reward_scale"),
    ("  repeat updates_per_step times:", "update"),
    ("    batch ~ uniform over (task, index)", "ReplayBuffer.sample"),
    ("    target atoms r/scale + γ(1-d)(z - α log π(a'|s')), projected onto z", "categorical_projection"),
    ("    critic: cross-entropy of both members against the projected target; AdamW step", "critic_loss"),
    ("    target critic ← (1-τ) target + τ critic (Polyak)", "update"),
    ("    actor: mean(α log π(a|s) - Q(s, a)) with the critic frozen, e_i detached", "actor_loss"),
    ("    temperature: α (H - H_target,i), H_target,i = -|A_i|/2", "temperature_loss"),
    ("  every eval_interval steps: deterministic episodes of every task", "evaluate"),
]


def where(qualified_name: str) -> tuple[str, int]:
    """(file, first line) of a function, class or method of bro_mt.py (or of the environment adapters in
    brc_utils/envs.py), looked up in today's source."""
    obj = bro_mt if hasattr(bro_mt, qualified_name.split(".")[0]) else env_utils
    for part in qualified_name.split("."):
        obj = getattr(obj, part)
    return os.path.relpath(inspect.getsourcefile(obj), ROOT), inspect.getsourcelines(obj)[1]


def table_cell(text: str) -> str:
    return text.replace("|", "\\|")  # a pipe inside a Markdown table cell must be escaped


def link(qualified_name: str) -> str:
    file, line = where(qualified_name)
    return f"[`{qualified_name}`](../{file}#L{line}) ({file}:{line})"


rows = ["| pseudo-code | implemented by |", "|---|---|"]
for step, name in PSEUDO_CODE:
    indent = "&emsp;" * ((len(step) - len(step.lstrip())) // 2)
    rows.append(f"| {indent}`{table_cell(step.strip())}` | {link(name)} |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# ## From the paper's ideas to the code

# %%
CONCEPTS = [
    ("BroNet block: x + LN(W₂ ReLU(LN(W₁ x)))", "BroNetBlock"),
    ("BroNet: Linear, LN, ReLU, then residual blocks", "BroNet"),
    ("an ensemble of critics in one batched matmul", "EnsembleLinear"),
    ("learnable task embedding, flax-style initialisation", "make_task_embedding"),
    ("categorical critic conditioned on the task", "Critic"),
    ("unit-length embedding e_i", "Critic.embed"),
    ("Q = expectation of the members' mean distribution", "q_value"),
    ("C51 projection onto the fixed support", "categorical_projection"),
    ("cross-entropy critic loss with the soft Bellman target", "critic_loss"),
    ("SAC actor on [s, sg(e_i)]", "Actor"),
    ("tanh-Gaussian log-probability over the task's own dims", "Actor.sample"),
    ("padding and action masks; per-task target entropy -|A_i|/2", "action_masks_and_target_entropy"),
    ("automatic temperature", "temperature_loss"),
    ("one update: critic, Polyak target, actor, temperature", "update"),
    ("returns-to-go with the time-limit bootstrap", "returns_to_go"),
    ("per-task reward normalisation (Ḡ_i)", "RewardNormalizer"),
    ("reward divisor with the entropy term", "reward_scale"),
    ("per-task replay, uniform sampling over tasks", "ReplayBuffer"),
    ("model-size presets and exact parameter counts", "model_parameter_counts"),
    ("ablation: MSE critic", "mse_critic_loss"),
    ("ablation: one head per task", "MultiHeadCritic"),
    ("transfer to new tasks", "transfer"),
]
rows = ["| paper | code |", "|---|---|"] + [f"| {table_cell(concept)} | {link(name)} |" for concept, name in CONCEPTS]
display(Markdown("\n".join(rows)))


# %% [markdown]
# ## Exercise: Q from the critic's output
#
# Write `my_q_value(critic_out, support)`: from the critic's logits `[members, batch, bins]`, return Q `[batch]`, the
# expectation over the support of the **members' mean distribution** (average the softmaxes, not the logits). The
# check compares it with `q_value` on random logits. While your stub raises `NotImplementedError` it runs on the
# reference solution, `notebooks/solutions/00_overview.py` (read it after trying).


# %% tags=["exercise"]
def my_q_value(critic_out, support):
    # YOUR CODE HERE: return a tensor [batch]
    raise NotImplementedError


# %% tags=["check"]
answer = answer_or_solution(my_q_value, "00_overview")
generator = torch.Generator().manual_seed(0)
check_support = torch.linspace(-10, 10, 101)
for trial in range(5):
    check_logits = torch.randn(2, 16, 101, generator=generator) * 3
    torch.testing.assert_close(answer(check_logits, check_support), q_value(check_logits, check_support))
print("my_q_value agrees with q_value on 5 random batches")
