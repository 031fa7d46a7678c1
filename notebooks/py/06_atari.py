# %% [markdown]
# # 6. Atari: BRC from pixels
#
# The paper also evaluates BRC on multi-game Atari, but released no Atari code. `bro_atari.py` is this project's
# design: every BRC ingredient (a wide BroNet head, a categorical critic trained with cross-entropy, a learnable game
# embedding, per-game reward normalisation), on top of a standard pixel pipeline and categorical double DQN. The
# module docstring lists each choice and its source. This notebook shows:
#
# 1. the frame pipeline, frame by frame (`AtariGame`, `push_frame`);
# 2. the game embedding and the network (`ImpalaEncoder`, `QNetwork`, `model_parameter_counts`);
# 3. the replay buffer that stores single frames (`ReplayBuffer.stacks`, `ReplayBuffer.n_step`);
# 4. the discrete categorical target (`double_dqn_target`, `critic_loss`), on a batch from a tiny run of `main`.

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

from brc_utils.atari import SUITES, AtariGame
from bro_atari import (
    FRAME_STACK,
    MODEL_SIZES,
    Args,
    QNetwork,
    ReplayBuffer,
    RewardNormalizer,
    critic_loss,
    double_dqn_target,
    main,
    model_parameter_counts,
    push_frame,
    q_values,
    reward_scale,
)
from exercises import answer_or_solution

torch.manual_seed(0)
torch.set_num_threads(1)  # small networks: one thread is as fast and leaves the other cores free
plt.rcParams.update({"figure.dpi": 72, "figure.figsize": (10, 3), "font.size": 12})
NOTEBOOK_DIR = os.getcwd()
rng = np.random.default_rng(0)


def show(ax, image, title):
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_title(title, fontsize=11)
    ax.axis("off")


# %% [markdown]
# ## The frame pipeline
#
# `AtariGame` (in `brc_utils/atari.py`, the ALE adapter beside the script) wraps one ALE game with the standard
# preprocessing (Mnih et al., 2015; Machado et al., 2018):
#
# - each agent action is repeated for **4 emulator frames**; the observation is the pixel-wise **max of the last two**
#   (some games draw sprites only every other frame);
# - converted to **grayscale** and resized to **84×84** (area averaging);
# - up to 30 no-op frames at the start of an episode, and sticky actions (the emulator repeats the previous action
#   with probability 0.25), so that a memorised action sequence does not score.
#
# The training loop keeps the last **4 frames** as the state (`push_frame`), so the network can see motion.

# %%
game = AtariGame("Breakout", seed=0)
game.reset()
for _ in range(40):  # play a little so that something is on the screen
    frame, reward, terminated, truncated, life_lost = game.step(rng.integers(game.num_actions))

fig, axes = plt.subplots(1, 4, figsize=(12, 3.6))
show(axes[0], game.render(), f"emulator RGB {game.render().shape}")
show(axes[1], game.screens[0], "grayscale, 3rd of 4 frames")
show(axes[2], game.screens[1], "grayscale, 4th of 4 frames")
show(axes[3], frame, f"max of the two, resized {frame.shape}")
plt.show()
print(f"{game.num_actions} actions (ALE's full set: several games share one action space)")

# %%
pong = AtariGame("Pong", seed=0)
stack = np.repeat(pong.reset()[None], FRAME_STACK, 0)  # an episode's first state repeats its first frame
for _ in range(40):
    frame, *_ = pong.step(rng.integers(pong.num_actions))
    push_frame(stack, frame)
fig, axes = plt.subplots(1, 5, figsize=(14, 3))
for k in range(FRAME_STACK):
    show(axes[k], stack[k], f"stack[{k}]" + (" (newest)" if k == FRAME_STACK - 1 else ""))
show(axes[4], stack[-1].astype(int) - stack[0].astype(int), "newest − oldest: the motion")
plt.show()
print("state:", stack.shape, stack.dtype)

# %% [markdown]
# ## Several games, one network
#
# With several games every `AtariGame` uses ALE's full 18-action set, so one output layer serves all games (a single
# game uses its own minimal set). The `QNetwork` reads a stack, encodes it with an Impala-style ResNet shared by all
# games, appends the game's **unit-length 32-d embedding** (as BRC's task embedding, notebook 3), and a BroNet head of
# the `--model-size` width outputs 101 logits for each of the 18 actions:
#
# $$[\mathrm{Impala}(s),\ e_g] \;\to\; \mathrm{BroNet}(W) \;\to\; \text{logits} \in \mathbb R^{18 \times 101}, \qquad
# Q(s, a) = \sum_j z_j\, \mathrm{softmax}(\text{logits}_a)_j .$$

# %%
games = SUITES["ATARI_QUICK"]
frames = [AtariGame(name, seed=i).reset() for i, name in enumerate(games)]
fig, axes = plt.subplots(1, len(games), figsize=(9, 3.2))
for ax, name, frame in zip(axes, games, frames):
    show(ax, frame, f"{name}: minimal set {AtariGame(name, 0, full_action_space=False).num_actions} actions")
plt.show()

net = QNetwork(num_games=len(games), num_actions=18, width=64, encoder_width=8)
stacks = torch.as_tensor(np.stack([np.repeat(f[None], FRAME_STACK, 0) for f in frames]))  # [games, 4, 84, 84] uint8
game_ids = torch.arange(len(games))
with torch.no_grad():
    features, embedding = net.encoder(stacks), net.embed(game_ids)
    logits = net(stacks, game_ids)
print(
    "encoder features",
    tuple(features.shape),
    "+ game embedding",
    tuple(embedding.shape),
    "(norms",
    embedding.norm(dim=-1).numpy().round(3),
    ") -> logits",
    tuple(logits.shape),
)
print("Q-values", tuple(q_values(logits, torch.linspace(-10, 10, 101)).shape), "= [games, actions]")

# %% [markdown]
# Parameter counts for the default five games (`ATARI_5`) and the standard encoder (width 16): the encoder is small
# and fixed; the BroNet head grows with the preset, and its first layer reads the 3 872 encoder features.

# %%
print(f"{'preset':>6} {'width':>6} {'encoder':>9} {'embedding':>9} {'BroNet head':>14} {'total':>14}")
for name, width in MODEL_SIZES.items():
    c = model_parameter_counts(num_games=5, num_actions=18, width=width)
    print(f"{name:>6} {width:>6} {c['encoder']:>9,} {c['game_embedding']:>9,} {c['head']:>14,} {c['total']:>14,}")

# %% [markdown]
# ## A tiny run of the real loop
#
# To look at replay and targets on real data we run `main` for 400 steps on Pong and Breakout with a tiny network
# (encoder width 4, head width 32), 300 random steps first, and `save_buffer=True` so the checkpoint holds the replay
# buffer. Every other setting is the script's (n = 3, γ = 0.99, per-game reward normalisation). About 20 seconds.

# %%
args = Args(
    env_ids=["Pong", "Breakout"],
    critic_width=32,
    encoder_width=4,
    total_timesteps=400,
    learning_starts=300,
    buffer_size=500,
    batch_size=16,
    eval_interval=10_000,
    eval_episodes=1,
    max_episode_frames=1200,
    log_interval=200,
    save_buffer=True,
)
run_dir = tempfile.mkdtemp(prefix="brc_notebook6_")
os.chdir(run_dir)
try:
    checkpoint = torch.load(main(args), weights_only=True)
finally:
    os.chdir(NOTEBOOK_DIR)
shutil.rmtree(run_dir)

# %% [markdown]
# ## Replay stores single frames
#
# Storing 4-frame stacks would keep every frame 4 times (and the next state's stack again). `ReplayBuffer` stores each
# 84×84 uint8 frame **once**, with the action, the raw reward and three flags (`terminal`, `first`, `last`); sampling
# rebuilds the stacks. At an episode's start the stack repeats the episode's first frame instead of reaching into the
# previous episode, exactly as the environment loop does.

# %%
num_games = len(args.env_ids)
print(
    f"replay memory per game for 200 000 entries: {ReplayBuffer.bytes_needed(1, 200_000) / 2**30:.2f} GiB "
    f"(stacks of s and s' would need ~{8 * 84 * 84 * 200_000 / 2**30:.1f} GiB)"
)
rb = ReplayBuffer(num_games, args.buffer_size, device="cpu")
rb.load_state_dict(checkpoint["replay_buffer"])
starts = rb.first[1, : rb.size[1]].nonzero()[:, 0]  # entries where a Breakout episode begins
start = int(starts[1]) if len(starts) > 1 else 0
fig, axes = plt.subplots(2, FRAME_STACK, figsize=(9, 5))
for row, index in enumerate([start, start + 2]):
    stack = rb.stacks(torch.tensor([1]), torch.tensor([index]))[0]
    for k in range(FRAME_STACK):
        show(axes[row, k], stack[k].numpy(), f"entry {index}, frame {k}")
plt.suptitle("Breakout: a stack at an episode's first entry, and two steps later")
plt.show()

# %% [markdown]
# ## The discrete categorical target
#
# Per-game reward normalisation uses the same return-based statistics as `bro_mt.py` (notebook 4), without the entropy
# term (DQN has none): the divisor is $\max(\bar G_g, 1)/10$, floored at one point because Atari rewards are integers.
# `ReplayBuffer.n_step` sums the next $n = 3$ normalised rewards, stopping at a terminal (a lost life, in training),
# and gives the bootstrap factor $\gamma^k$ (0 after a terminal). Then the **categorical double-DQN** target:
#
# $$a^* = \arg\max_a Q_{online}(s', a), \qquad
# \hat z_j = R^{(n)} + \gamma^n z_j \ \text{ with mass } p^{target}_j(s', a^*), \qquad
# m = \mathrm{project}(\hat z),$$
#
# and the loss is the cross-entropy $-\sum_j m_j \log p^{online}_j(s, a)$ of the action taken. The online network
# chooses $a^*$ and the slowly moving target network (Polyak, τ = 0.005) evaluates it, which curbs the
# over-estimation of taking a max over noisy estimates. `double_dqn_target` is three lines; the projection is the same C51
# `categorical_projection` as in `bro_mt.py` (repeated in the file: each script is self-contained).

# %%
normalizer = RewardNormalizer(num_games, args.gamma)
normalizer.load_state_dict(checkpoint["normalizer"])
scale = reward_scale(torch.as_tensor(normalizer.max_abs_return(), dtype=torch.float32))
print("G_bar per game", normalizer.max_abs_return().round(2), "-> reward divisor", scale.numpy().round(2))

net_args = (num_games, 18, args.critic_width, args.encoder_width)
q_network, target_network = QNetwork(*net_args), QNetwork(*net_args)
q_network.load_state_dict(checkpoint["q_network"])
target_network.load_state_dict(checkpoint["target_network"])
support = torch.linspace(args.v_min, args.v_max, args.num_bins)

torch.manual_seed(1)
batch = rb.sample(256, args.n_step, args.gamma, scale, clip=False, device="cpu")
print("batch:", {name: tuple(value.shape) for name, value in batch._asdict().items()})
print(
    "bootstrap factors in the batch:",
    np.unique(batch.bootstrap.numpy()).round(4),
    f"(γ³ = {args.gamma**3:.4f}; γ^k with k < 3 where an episode was cut; 0 after a terminal)",
)
with torch.no_grad():
    next_online, next_target = q_network(batch.next_obs, batch.game_ids), target_network(batch.next_obs, batch.game_ids)
    target_probs = double_dqn_target(next_online, next_target, batch.returns, batch.bootstrap, support)
    loss, q_mean = critic_loss(q_network, target_network, batch, support)
    online_probs = q_network(batch.obs, batch.game_ids)[torch.arange(len(batch.actions)), batch.actions].softmax(-1)
print(f"cross-entropy loss {loss:.3f} (log 101 = {np.log(101):.3f}), mean Q {q_mean:.3f}")

# %%
i = int(batch.returns.abs().argmax())  # a sample that saw a reward, if the batch has one
best = int(q_values(next_online[i : i + 1], support).argmax())
fig, axes = plt.subplots(1, 3, figsize=(14, 3))
axes[0].bar(
    range(18), q_values(next_online[i : i + 1], support)[0], color=["C3" if a == best else "C0" for a in range(18)]
)
axes[0].set_title(f"online Q(s', a): a* = {best}", fontsize=12)
axes[0].set_xlabel("action")
axes[1].bar(support, next_target[i, best].softmax(-1), width=0.18, color="C1")
axes[1].set_title("target network's p(s', a*)", fontsize=12)
axes[2].bar(support, target_probs[i], width=0.18, color="C2", label="target m")
axes[2].plot(support, online_probs[i], "k", lw=1, label="online p(s, a)")
axes[2].set_title(f"R = {batch.returns[i]:.3f}, bootstrap {batch.bootstrap[i]:.3f}: projected target", fontsize=12)
axes[2].legend(fontsize=10)
for ax in axes[1:]:
    ax.set_xlabel("return atom")
plt.tight_layout()
plt.show()


# %% [markdown]
# After 100 updates the networks are still nearly uniform (the loss is close to $\log 101$), so the target is the target
# network's flat distribution, shifted by $R$ and narrowed by $\gamma^3$. This sample saw a point early in the run,
# while $\bar G$ is still small: one point is a large normalised reward, and the part of the shifted distribution beyond
# $v_{max}$ piles up on the last atom (notebook 1). As the run goes on $\bar G$ grows, the normalised rewards shrink
# and the targets fit inside the support; the cross-entropy keeps every game's gradient bounded whatever its score
# scale.
#
# ## Change it yourself
#
# - `--n-step`, `--target-network-frequency` (periodic copies instead of Polyak), `--clip-rewards` (DQN's clipping
#   instead of normalisation), `--repeat-action-probability 0` (the Atari-100k protocol).
# - Replace `double_dqn_target`'s online argmax by the target network's own argmax (plain categorical DQN / C51) and
#   compare the Q-values over a run.
# - A real run needs a GPU: `python bro_atari.py --env-ids ATARI_QUICK --model-size 4M` (see `README.md`).

# %% [markdown]
# ## Exercise: the categorical double-DQN target
#
# Write `my_double_dqn_target(next_online_logits, next_target_logits, returns, bootstrap, support)`: from the two
# networks' logits at $s'$ (`[batch, actions, bins]`), pick $a^*$ with the online network's Q-values, take the target
# network's distribution of $a^*$, move its atoms to $R + \text{bootstrap}\cdot z$ and project them back (you may use
# `categorical_projection`; notebook 1 has its own exercise). The check compares it with `double_dqn_target` on random
# logits, returns and bootstrap factors (including 0, after a terminal). Solution: `notebooks/solutions/06_atari.py`.


# %% tags=["exercise"]
def my_double_dqn_target(next_online_logits, next_target_logits, returns, bootstrap, support):
    # YOUR CODE HERE: return the target distribution [batch, bins]
    raise NotImplementedError


# %% tags=["check"]
answer = answer_or_solution(my_double_dqn_target, "06_atari")
generator = torch.Generator().manual_seed(0)
check_support = torch.linspace(-10, 10, 101)
for trial in range(5):
    online, target = torch.randn(2, 16, 18, 101, generator=generator) * 3
    returns = torch.randn(16, generator=generator) * 2
    bootstrap = 0.99 ** torch.randint(1, 4, (16,), generator=generator) * (torch.rand(16, generator=generator) > 0.2)
    expected = double_dqn_target(online, target, returns, bootstrap, check_support)
    torch.testing.assert_close(answer(online, target, returns, bootstrap, check_support), expected)
print("my_double_dqn_target agrees with double_dqn_target on 5 random batches")
