"""BRC for multi-game Atari from pixels, in one file.

BRC -- "Bigger, Regularized, Categorical: High-Capacity Value Functions are Efficient Multi-Task Learners"
(Nauman, Cygan, Sferrazza, Kumar, Abbeel, 2025, arXiv:2505.23150), for discrete actions. One categorical
double-DQN agent learns several Atari games at once: a shared Impala-style encoder reads the pixels, a learnable
game embedding says which game it is, and a wide BroNet head (Bigger, Regularized by LayerNorm and weight decay)
predicts, for every one of the 18 joystick actions, a distribution over 101 return atoms (Categorical, trained
by cross-entropy). Rewards are normalised per game so that every game's returns share one scale.

The authors released no Atari code. The BRC ingredients follow the paper and bro_mt.py; every other choice is
ours, taken from standard practice, and named here with its reason:
  - sticky actions 0.25 (Machado et al., 2018; ALE v5's default), the modern protocol: the games stay stochastic,
    so memorised action sequences do not score. --repeat-action-probability 0 is the Atari-100k setting.
  - preprocessing as Mnih et al. (2015): up to 30 no-op frames at reset, 4 frames per action with a max over the
    last two, 84x84 grayscale (Pillow's box filter: area averaging, close to cv2.INTER_AREA), 4-frame stacks padded
    with the episode's first frame, episodes cut at 108k frames. A lost life ends the bootstrap in training
    (not the episode, not evaluation), as DQN did; --no-terminal-on-life-loss follows Machado et al.
  - one game: its minimal action set and no embedding; several: ALE's full 18-action set shared by all games.
  - one Q-network with a target copy, no ensemble: bro_mt.py's two members serve SAC's critic, whose actor follows
    their averaged Q; a categorical DQN (C51, Rainbow, BBF) picks actions by argmax over one network, and double DQN
    already separates choosing a' (online network) from scoring it (target). --model-size scales its BroNet head.
  - Impala-style encoder (Espeholt et al., 2018), PyTorch's default conv init: the standard pixel encoder of
    data-efficient Atari agents (DER, SPR, BBF); --encoder-width widens it.
  - n-step returns n = 3 (Rainbow), EMA target tau = 0.005 (BRC; also BBF), epsilon 1 -> 0.01 over 250k steps
    after learning starts and 0.001 in evaluation (Dopamine), 1 update per step with batch 256 (64 with one
    game), 10k random steps first, 200k frames of replay per game (1.4 GiB each).
  - the reward normaliser counts a life as an episode when lives end the bootstrap (so its returns are the ones
    the critic predicts), and never divides by less than 1/10 of a point (Atari rewards are integers).
  - default games ATARI_5 (Aitchison et al., 2023), five games whose scores predict the median over all 57.

Map of the file (search for the section markers "# ----"):
  Args ..................... every flag: the algorithm's, the reward-clipping ablation, then the ones that only
                             run the experiment
  Games .................... where the games, their preprocessing and reference scores live (brc_utils/atari.py)
  Networks ................. BroNet pieces (as in bro_mt.py), Impala encoder, the categorical Q-network
  Categorical projection ... C51, and the double-DQN target built on it
  Losses and the update .... cross-entropy on the taken action, one update, the exploration schedule
  Reward normalisation ..... per-game scale from the largest discounted return seen
  Replay buffer ............ single uint8 frames per game; stacks and n-step returns rebuilt on sampling
  Evaluation ............... raw and human-normalised scores, mean / median / IQM across games
  Training loop ............ act -> step envs -> record -> store -> update -> log/save -> evaluate
  Not BRC .................. flag checks, sizes, memory and the device: set-up a student may skip
What is not BRC lives in brc_utils/ and you never need to read it to learn the method: the ALE adapter
(brc_utils/atari.py: the games with the preprocessing above, suites, reference scores) and the run plumbing
(brc_utils/run.py: run folders, logging, signals, checkpoints and exact resume, memory checks, vector envs,
--compile / --cudagraphs). Each call into it in main() is one line whose name says what it does.
"""

import math
import os
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Literal, NamedTuple, Optional

# Idle OpenMP threads sleep rather than spin (read when torch loads): spinning ones on a busy core slow every update.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

from brc_utils import distributed
from brc_utils import run as run_utils
from brc_utils.atari import FRAME_SIZE, REFERENCE_SCORES, AtariGame, make_game_envs, resolve_env_ids


@dataclass
class AlgorithmArgs:
    # Algorithm
    env_ids: list[str] = field(default_factory=lambda: ["ATARI_5"])
    """ALE games (Pong, Breakout, ...) and suites ATARI_5, ATARI_QUICK (Pong Breakout Boxing), ATARI_100K_26, ATARI_57"""
    model_size: Literal["1M", "4M", "16M", "64M", "256M", "1B"] = "64M"
    """BroNet head preset: its width W (1M: 512 ... 1B: 16384), the same presets as bro_mt.py"""
    critic_width: Optional[int] = None
    """override the preset's head width"""
    encoder_width: int = 16
    """channels of the encoder's first stage; the other two have twice as many (16 = Impala's 16-32-32)"""
    total_timesteps: int = 1_000_000
    """environment steps; one step = every game's env takes one action (4 frames)"""
    learning_starts: int = 10_000
    """random-action steps before the first gradient update"""
    buffer_size: int = 200_000
    """replay capacity per game (frames; ~7 KiB each)"""
    batch_size: Optional[int] = None
    """batch size of an update (None: 256 with several games, 64 with one game)"""
    updates_per_step: int = 1
    """gradient updates per environment step (replay ratio)"""
    update_every: int = 1
    """run the --updates-per-step updates every K environment steps only (K > 1: a replay ratio below 1, as DQN's 4)"""
    n_step: int = 3
    """length of the multi-step return"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """Polyak averaging rate of the target network (used when --target-network-frequency is 0)"""
    target_network_frequency: int = 0
    """copy the online network to the target every N steps instead of Polyak averaging (0: Polyak)"""
    learning_rate: float = 3e-4
    """AdamW learning rate"""
    weight_decay: float = 1e-4
    """AdamW weight decay"""
    epsilon_end: float = 0.01
    """final exploration rate of the epsilon-greedy policy"""
    epsilon_decay_steps: int = 250_000
    """steps after --learning-starts over which epsilon falls linearly from 1 to --epsilon-end"""
    eval_epsilon: float = 0.001
    """exploration rate during evaluation (avoids a greedy policy stuck in a loop)"""
    num_bins: int = 101
    """atoms of the categorical support"""
    v_min: float = -10.0
    """lowest atom of the support (returns are normalised to about [-10, 10])"""
    v_max: float = 10.0
    """highest atom of the support"""
    embedding_dim: int = 32
    """size of the learnable game embedding (multi-game only)"""
    repeat_action_probability: float = 0.25
    """sticky actions: the emulator repeats the previous action with this probability (0 for Atari-100k)"""
    noop_max: int = 30
    """at most this many no-op frames at the start of every episode"""
    max_episode_frames: int = 108_000
    """cut episodes after N frames (30 minutes of play); a truncation still bootstraps"""
    terminal_on_life_loss: bool = True
    """a lost life ends the bootstrap in training (evaluation always plays whole games)"""
    eval_interval: int = 50_000
    """evaluate every N environment steps (and at the end)"""
    eval_episodes: int = 10
    """evaluation episodes per game"""

    # Ablation
    clip_rewards: bool = False
    """clip rewards to [-1, 1] (DQN) instead of BRC's per-game reward normalisation"""


@dataclass
class Args(run_utils.RunArgs, AlgorithmArgs):
    """Every flag: the algorithm's above, then those that only run the experiment (seed, logging, checkpoints, speed),
    which bro_mt.py shares (run_utils.RunArgs). A dataclass lists its bases' fields from the right, so --help
    shows the algorithm's flags first."""

    exp_name: str = "bro_atari"


MODEL_SIZES = {"1M": 512, "4M": 1024, "16M": 2048, "64M": 4096, "256M": 8192, "1B": 16384}
CRITIC_DEPTH, FRAME_STACK = 2, 4


# ---- Games ----
# Game ids are ALE's names (Pong, MsPacman); suites name lists of them (ATARI_5, ATARI_QUICK, ...). Both, the ALE
# wrapper with the standard preprocessing (no-ops, frame skip 4 with a max over the last two frames, 84x84
# grayscale) and the random / human reference scores live in brc_utils/atari.py: not BRC. The frames are stacked
# here, in the training loop and the replay buffer, since the stack is the network's input.


# ---- Networks ----
class EnsembleLinear(nn.Module):
    """`members` independent Linear layers in one batched matmul: x [members, batch, in] -> [members, batch, out].

    Orthogonal init (gain sqrt(2) by default), zero bias, each member drawn on its own.
    """

    def __init__(self, members: int, in_features: int, out_features: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(members, 1, out_features))
        with torch.no_grad():
            for w in self.weight:
                w.copy_(nn.init.orthogonal_(torch.empty(out_features, in_features, device=w.device), gain).T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        members, in_features, out_features = self.weight.shape
        return f"members={members}, in_features={in_features}, out_features={out_features}"


class EnsembleLayerNorm(nn.Module):
    """LayerNorm over the features with a separate scale and shift per ensemble member."""

    def __init__(self, members: int, features: int, eps: float = 1e-6):  # eps as flax's LayerNorm
        super().__init__()
        self.weight = nn.Parameter(torch.ones(members, 1, features))
        self.bias = nn.Parameter(torch.zeros(members, 1, features))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # under --bf16 the matmul before it ran in bfloat16, but the normalisation runs in the weights' float32
        return F.layer_norm(x.to(self.weight.dtype), x.shape[-1:], eps=self.eps) * self.weight + self.bias

    def extra_repr(self) -> str:
        return f"members={self.weight.shape[0]}, features={self.weight.shape[-1]}, eps={self.eps}"


class BroNetBlock(nn.Module):
    """BroNet residual block: x + LN(Linear(ReLU(LN(Linear(x)))))."""

    def __init__(self, members: int, width: int):
        super().__init__()
        self.linear1, self.norm1 = EnsembleLinear(members, width, width), EnsembleLayerNorm(members, width)
        self.linear2, self.norm2 = EnsembleLinear(members, width, width), EnsembleLayerNorm(members, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm2(self.linear2(F.relu(self.norm1(self.linear1(x)))))


class BroNet(nn.Module):
    """BroNet (Nauman et al., 2024): Linear -> LN -> ReLU, then `depth` residual blocks, for `members` nets at once."""

    def __init__(self, members: int, in_features: int, width: int, depth: int):
        super().__init__()
        self.linear, self.norm = EnsembleLinear(members, in_features, width), EnsembleLayerNorm(members, width)
        self.blocks = nn.Sequential(*[BroNetBlock(members, width) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.relu(self.norm(self.linear(x))))


class ImpalaResidual(nn.Module):
    """x + Conv(ReLU(Conv(ReLU(x)))), 3x3 convolutions that keep the shape."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class ImpalaEncoder(nn.Module):
    """Impala-style ResNet (Espeholt et al., 2018): three stages of conv -> 3x3 max-pool (stride 2) -> 2 residual
    blocks, then ReLU and flatten. [batch, 4, 84, 84] uint8 -> [batch, 2*width * 11 * 11] features."""

    def __init__(self, width: int = 16):
        super().__init__()
        stages, in_channels = [], FRAME_STACK
        for channels in (width, 2 * width, 2 * width):
            stages += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1)]
            stages += [ImpalaResidual(channels), ImpalaResidual(channels)]
            in_channels = channels
        self.stages = nn.Sequential(*stages)
        self.num_features = 2 * width * 11 * 11  # 84 -> 42 -> 21 -> 11

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return F.relu(self.stages(frames.float() / 255)).flatten(1)


def make_task_embedding(num_tasks: int, embedding_dim: int) -> nn.Embedding:
    """One learnable vector per task, initialised as flax's nn.Embed (the released code): N(0, 1/embedding_dim) per
    entry, so each row starts with norm ~1. Only its direction is used (unit-normalised), and Adam moves each entry by
    about the learning rate whatever the gradient's size: with torch's default N(0, 1) (norm ~sqrt(embedding_dim))
    the directions would turn ~sqrt(embedding_dim) times slower per update."""
    embedding = nn.Embedding(num_tasks, embedding_dim)
    nn.init.normal_(embedding.weight, std=embedding_dim**-0.5)
    return embedding


class QNetwork(nn.Module):
    """Categorical Q-network conditioned on a learnable game embedding.

    Pixels -> shared encoder -> [features, game_embedding] -> BroNet head -> logits over the return support for
    every action, [batch, actions, num_bins]. The game embedding is unit length, as BRC's task embedding.
    bf16=True (--bf16) runs the convolutions and matmuls in bfloat16 and returns float32 logits.
    """

    def __init__(self, num_games, num_actions, width, encoder_width=16, num_bins=101, embedding_dim=32, bf16=False):
        super().__init__()
        self.num_actions, self.num_bins, self.bf16 = num_actions, num_bins, bf16
        self.encoder = ImpalaEncoder(encoder_width)
        self.game_embedding = make_task_embedding(num_games, embedding_dim) if num_games > 1 else None
        self.embedding_dim = embedding_dim if num_games > 1 else 0
        self.trunk = BroNet(1, self.encoder.num_features + self.embedding_dim, width, CRITIC_DEPTH)
        self.head = EnsembleLinear(1, width, num_actions * num_bins)

    def embed(self, game_ids: torch.Tensor) -> torch.Tensor:
        """Unit-length game embeddings [batch, embedding_dim] (zero-width with a single game)."""
        if self.game_embedding is None:
            return torch.zeros(len(game_ids), 0, device=game_ids.device)
        return F.normalize(self.game_embedding(game_ids), dim=-1)

    def forward(self, frames: torch.Tensor, game_ids: torch.Tensor) -> torch.Tensor:
        with torch.autocast(frames.device.type, torch.bfloat16, enabled=self.bf16):
            x = torch.cat([self.encoder(frames), self.embed(game_ids)], dim=-1)
            logits = self.head(self.trunk(x[None]))[0]  # [batch, actions * num_bins]
        # softmax, projection and loss in float32 (a no-op without --bf16)
        return logits.float().view(len(x), self.num_actions, self.num_bins)


def q_values(logits: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Expected return of every action, sum_j z_j * softmax(logits)_j: [batch, actions, bins] -> [batch, actions]."""
    return (logits.softmax(-1) * support).sum(-1)


def count_parameters(module: Optional[nn.Module]) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def model_parameter_counts(num_games, num_actions, width, encoder_width=16, num_bins=101, embedding_dim=32) -> dict:
    """Exact parameter counts, built on the meta device so that even the 1B preset allocates nothing."""
    with torch.device("meta"):
        net = QNetwork(num_games, num_actions, width, encoder_width, num_bins, embedding_dim)
    head = count_parameters(net.trunk) + count_parameters(net.head)
    counts = {"encoder": count_parameters(net.encoder), "game_embedding": count_parameters(net.game_embedding)}
    return counts | {"head": head, "total": count_parameters(net)}


# ---- Categorical projection (C51) ----
def categorical_projection(target_atoms: torch.Tensor, probs: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Project a distribution with mass `probs` at positions `target_atoms` [batch, bins] onto `support` [bins].

    Each shifted atom is clipped to [v_min, v_max] and its mass split linearly between the two neighbouring
    support atoms (Bellemare et al., 2017). An atom that lands exactly on a support point keeps all its mass there.
    """
    v_min, v_max = support[0], support[-1]
    delta = (v_max - v_min) / (len(support) - 1)  # not support[1] - support[0]: that rounds worse in float32
    position = (target_atoms.clamp(v_min, v_max) - v_min) / delta  # fractional index into the support
    lower = position.floor()
    upper_weight = position - lower  # 0 when the atom lands exactly on `lower`
    lower = lower.long().clamp(0, len(support) - 1)  # clamping the integers also keeps a NaN target in bounds
    upper = (lower + 1).clamp(max=len(support) - 1)
    projected = torch.zeros_like(probs)
    projected.scatter_add_(-1, lower, probs * (1 - upper_weight))
    projected.scatter_add_(-1, upper, probs * upper_weight)
    return projected


def double_dqn_target(next_online_logits, next_target_logits, returns, bootstrap, support) -> torch.Tensor:
    """Categorical double-DQN target [batch, bins]: the online network picks a' = argmax_a Q(s', a), the target
    network's distribution of a' is moved to R + bootstrap * z (R: the n-step return, bootstrap: gamma^k, or 0
    after a termination) and projected back onto the support."""
    next_actions = q_values(next_online_logits, support).argmax(-1)
    rows = torch.arange(len(next_actions), device=next_actions.device)
    next_probs = next_target_logits.softmax(-1)[rows, next_actions]  # the target network's distribution of a'
    return categorical_projection(returns[:, None] + bootstrap[:, None] * support, next_probs, support)


# ---- Losses and the update ----
class Batch(NamedTuple):
    obs: torch.Tensor  # [batch, 4, 84, 84] uint8 frame stacks
    actions: torch.Tensor  # [batch], int64
    returns: torch.Tensor  # [batch], n-step return of normalised (or clipped) rewards
    bootstrap: torch.Tensor  # [batch], gamma^k for the state k steps later, 0 after a termination
    next_obs: torch.Tensor  # [batch, 4, 84, 84], the state k steps later
    game_ids: torch.Tensor  # [batch], int64


def critic_loss(q_network, target_network, batch: Batch, support):
    """Cross-entropy between the online distribution of the taken action and the projected double-DQN target.

    Returns the loss (mean over the batch) and the mean Q of the taken actions.
    """
    with torch.no_grad():
        next_online, next_target = (
            q_network(batch.next_obs, batch.game_ids),
            target_network(batch.next_obs, batch.game_ids),
        )
        target_probs = double_dqn_target(next_online, next_target, batch.returns, batch.bootstrap, support)
    rows = torch.arange(len(batch.actions), device=batch.actions.device)
    logits = q_network(batch.obs, batch.game_ids)[rows, batch.actions]  # [batch, bins]
    loss = -(target_probs * logits.log_softmax(-1)).sum(-1).mean()
    return loss, (logits.detach().softmax(-1) * support).sum(-1).mean()


def update(batch: Batch, q_network, target_network, optimizer, support, tau: float) -> torch.Tensor:
    """One gradient step on the critic loss, then the Polyak target update (skipped with tau = 0).

    Returns [critic loss, mean Q] as one tensor, with no host sync.
    """
    loss, q_mean = critic_loss(q_network, target_network, batch, support)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # torchrun: each process's gradients -> their mean over the processes, weighted by each one's share of the global
    # batch, so that every process takes the same step as one process on the union of the batches. The only place
    # processes meet in an update; in one process it does nothing.
    distributed.average_gradients(optimizer)
    optimizer.step()
    if tau:
        with torch.no_grad():
            torch._foreach_lerp_(list(target_network.parameters()), list(q_network.parameters()), tau)
    return torch.stack([loss, q_mean]).detach()


def make_networks(args, num_games: int, num_actions: int, width: int, device) -> tuple:
    """The Q-network, its target copy and AdamW. fused: torch's one-kernel AdamW (the per-tensor update up to float
    rounding, faster); capturable: a CUDA graph (--cudagraphs) needs the step count on the GPU."""
    sizes = (num_games, num_actions, width, args.encoder_width, args.num_bins, args.embedding_dim, args.bf16)
    with run_utils.announce("initialising the networks"):  # (a 64M head takes minutes on a CPU)
        q_network, target_network = QNetwork(*sizes).to(device), QNetwork(*sizes).to(device)
    target_network.load_state_dict(q_network.state_dict())
    target_network.requires_grad_(False)
    adamw = dict(lr=args.learning_rate, weight_decay=args.weight_decay, fused=True, capturable=args.cudagraphs)
    return q_network, target_network, torch.optim.AdamW(q_network.parameters(), **adamw)


METRICS = ["losses/critic_loss", "charts/q_mean"]
PROGRESS = "critic {losses/critic_loss:.3f} Q {charts/q_mean:.2f} epsilon {charts/epsilon:.3f}"


def epsilon_schedule(step: int, learning_starts: int, decay_steps: int, epsilon_end: float) -> float:
    """Epsilon-greedy rate: 1 until learning starts, then linearly down to `epsilon_end` over `decay_steps`."""
    progress = min(max((step - learning_starts) / decay_steps, 0.0), 1.0)
    return 1.0 + progress * (epsilon_end - 1.0)


# ---- Reward normalisation ----
def returns_to_go(rewards, gamma: float, bootstrap: float) -> np.ndarray:
    """Discounted returns-to-go G_t = r_t + gamma * G_{t+1}, with G_T = `bootstrap` after the last reward."""
    returns, g = np.empty(len(rewards), np.float64), bootstrap
    for t in range(len(rewards) - 1, -1, -1):
        g = rewards[t] + gamma * g
        returns[t] = g
    return returns


class RewardNormalizer:
    """Per-task reward scale from the largest discounted return-to-go seen (BRC's reward normalisation).

    When an episode of task i ends, its returns-to-go update G_max_i and G_min_i; G_bar_i = max(G_max_i, |G_min_i|).
    A truncated episode bootstraps its tail with mean(rewards)/(1 - gamma), a terminated one with 0.
    Until task i finishes its first episode (the released code divides by infinity then, zeroing every
    reward), we treat its episode so far as if truncated now and use that estimate. Statistics are float64.
    """

    def __init__(self, num_tasks: int, gamma: float):
        self.gamma = gamma
        self.max_return = np.full(num_tasks, -np.inf)
        self.min_return = np.full(num_tasks, np.inf)
        self.episode_rewards = [[] for _ in range(num_tasks)]

    def record(self, task: int, reward: float):
        self.episode_rewards[task].append(reward)

    def end_episode(self, task: int, terminated: bool):
        returns = self._returns(task, terminated)
        self.max_return[task] = max(self.max_return[task], returns.max())
        self.min_return[task] = min(self.min_return[task], returns.min())
        self.episode_rewards[task] = []

    def _returns(self, task: int, terminated: bool) -> np.ndarray:
        rewards = np.asarray(self.episode_rewards[task], np.float64)
        tail = 0.0 if terminated or len(rewards) == 0 else rewards.mean() / (1 - self.gamma)
        return returns_to_go(rewards, self.gamma, tail) if len(rewards) else np.zeros(1)

    def needs_fallback(self) -> bool:
        return bool(np.isinf(self.max_return).any())

    def max_abs_return(self) -> np.ndarray:
        """G_bar per task [num_tasks], float64 (the partial-episode fallback for tasks without a finished episode)."""
        g_bar = np.maximum(self.max_return, np.abs(self.min_return))
        for task in np.flatnonzero(np.isinf(self.max_return)):
            partial = self._returns(task, terminated=False)
            g_bar[task] = max(partial.max(), abs(partial.min()))
        return g_bar

    def state_dict(self) -> dict:
        extremes = {
            "max_return": torch.from_numpy(self.max_return.copy()),
            "min_return": torch.from_numpy(self.min_return.copy()),
        }
        return {**extremes, "episode_rewards": [torch.tensor(r, dtype=torch.float64) for r in self.episode_rewards]}

    def load_state_dict(self, state: dict):
        self.max_return, self.min_return = state["max_return"].numpy().copy(), state["min_return"].numpy().copy()
        self.episode_rewards = [r.tolist() for r in state["episode_rewards"]]


def reward_scale(max_abs_return: torch.Tensor) -> torch.Tensor:
    """Divisor of each game's rewards: G_bar_i / 10, so that returns span ~[-10, 10]. BRC's entropy term has no
    counterpart in DQN; we floor G_bar at one point instead, so a game without rewards yet never divides by ~0."""
    return max_abs_return.clamp(min=1.0) / 10


# ---- Replay buffer ----
class ReplayBuffer:
    """Per-game rings of single uint8 frames [games, capacity, 84, 84] with per-frame action, reward and flags.

    Entry t holds the newest frame of state s_t, the action a_t taken there and the reward r_t that followed.
    Each frame is stored once; sampling rebuilds the 4-frame stacks (padded with the episode's first frame, as the
    environment loop does) and the n-step returns. Flags per entry:
      terminal: the transition from this entry ended in a termination (or a lost life): no bootstrap past it;
      first:    this entry is an episode's first frame (stacks do not reach past it);
      last:     the final frame of a truncated episode, kept only to bootstrap from; it holds no transition.
    A game writes one entry per step plus a `last` one per truncation, so every game has its own cursor.
    """

    def __init__(self, num_games: int, capacity: int, device, first_game: int = 0):
        self.num_games, self.capacity, self.device = num_games, capacity, torch.device(device)
        self.first_game = first_game  # global id of the first game (torchrun: each process holds its own games)
        shape = (num_games, capacity)
        self.frames = torch.zeros(*shape, FRAME_SIZE, FRAME_SIZE, dtype=torch.uint8, device=device)
        self.actions = torch.zeros(shape, dtype=torch.uint8, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.terminal = torch.zeros(shape, dtype=torch.bool, device=device)
        self.first = torch.zeros(shape, dtype=torch.bool, device=device)
        self.last = torch.zeros(shape, dtype=torch.bool, device=device)
        self.pos = torch.zeros(num_games, dtype=torch.long, device=device)  # next entry to write, per game
        self.size = torch.zeros(num_games, dtype=torch.long, device=device)

    @staticmethod
    def bytes_needed(num_games: int, capacity: int) -> int:
        return num_games * capacity * (FRAME_SIZE * FRAME_SIZE + 1 + 4 + 3)

    def add(self, frames, actions, rewards, terminal, first, last=None, games=None):
        """Write one entry for each of `games` (default: all), numpy arrays with the game as first axis."""
        all_games = torch.arange(self.num_games, device=self.device)
        games = all_games if games is None else torch.as_tensor(games, device=self.device)
        last = np.zeros(len(games), bool) if last is None else last
        # An empty ring holds no frame before this entry, so a stack must not reach past it: it starts an episode
        # (also mid-episode, when a run resumed without --save-buffer).
        first = np.asarray(first, bool) | (self.size[games] == 0).cpu().numpy()
        pos = self.pos[games]
        for buf, value in zip(self._fields(), (frames, actions, rewards, terminal, first, last)):
            buf[games, pos] = torch.as_tensor(np.asarray(value), device=self.device).to(buf.dtype)
        self.pos[games] = (pos + 1) % self.capacity
        self.size[games] = (self.size[games] + 1).clamp(max=self.capacity)

    def add_final_frames(self, final_frames, games: np.ndarray):
        """After a step: the final frame of each truncated episode of `games`, kept only to bootstrap from."""
        if len(games):
            zeros = np.zeros(len(games))
            self.add(np.stack(final_frames[games]), zeros, zeros, zeros, zeros, np.ones(len(games)), games)

    def stacks(self, games: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Frame stacks [batch, 4, 84, 84] ending at entries `index` of `games`; before an episode's first entry the
        stack repeats that first frame."""
        indices = [index]
        for _ in range(FRAME_STACK - 1):
            newest = indices[0]
            indices.insert(0, torch.where(self.first[games, newest], newest, (newest - 1) % self.capacity))
        return self.frames[games[:, None], torch.stack(indices, 1)]

    def n_step(self, games, index, n: int, gamma: float, scale: torch.Tensor, clip: bool = False):
        """n-step return sum_k gamma^k r_{t+k} / scale (or, with --clip-rewards, of rewards clipped to [-1, 1]), the
        bootstrap factor (gamma^k, or 0 after a terminal entry) and the entry of the state to bootstrap from. The sum
        stops early at a terminal entry or before a `last` one (a truncated episode's final frame)."""
        returns = torch.zeros(len(index), device=self.device)
        bootstrap, discount = torch.ones_like(returns), torch.ones_like(returns)
        running, next_index = torch.ones_like(index, dtype=torch.bool), index
        for k in range(n):
            entry = (index + k) % self.capacity
            following = (entry + 1) % self.capacity
            reward = self.rewards[games, entry]
            returns += running * discount * (reward.clamp(-1, 1) if clip else reward / scale)
            discount = discount * gamma
            terminal = self.terminal[games, entry]
            bootstrap = torch.where(running, discount * ~terminal, bootstrap)
            next_index = torch.where(running, following, next_index)
            running = running & ~terminal & ~self.last[games, following]
        return returns, bootstrap, next_index

    def sample(self, batch_size: int, n: int, gamma: float, scale: torch.Tensor, clip: bool, device) -> Batch:
        """Uniform over (game, entry) pairs whose n following entries exist and, once the ring is full, whose stack
        does not reach the overwritten oldest entries. `scale` [games] divides each game's rewards."""
        games = torch.randint(self.num_games, (batch_size,), device=self.device)
        size = self.size[games]
        oldest = torch.where(size == self.capacity, FRAME_STACK, 0)  # chronological rank of the first valid entry
        rank = oldest + (torch.rand(batch_size, device=self.device) * (size - n - oldest)).long()
        index = (self.pos[games] - size + rank) % self.capacity
        # A truncated episode's final frame holds no action: take the transition that led to it instead.
        index = torch.where(self.last[games, index], (index - 1) % self.capacity, index)
        returns, bootstrap, next_index = self.n_step(games, index, n, gamma, scale.to(self.device)[games], clip)
        fields = (self.stacks(games, index), self.actions[games, index].long(), returns, bootstrap)
        fields += (self.stacks(games, next_index), games + self.first_game)
        return Batch(*(x.to(device, non_blocking=True) for x in fields))

    def _fields(self):
        return self.frames, self.actions, self.rewards, self.terminal, self.first, self.last

    def state_dict(self) -> dict:
        used = int(self.size.max())  # entries beyond every game's size are still zero
        return {"pos": self.pos.cpu(), "size": self.size.cpu(), "data": [buf[:, :used].cpu() for buf in self._fields()]}

    def load_state_dict(self, state: dict):
        self.pos.copy_(state["pos"])
        self.size.copy_(state["size"])
        for buf, saved in zip(self._fields(), state["data"]):
            buf[:, : saved.shape[1]] = saved.to(self.device)


# ---- Evaluation ----
def push_frame(stack: np.ndarray, frame: np.ndarray):
    """Shift a [4, 84, 84] frame stack by one and put `frame` last (in place)."""
    stack[:-1] = stack[1:]
    stack[-1] = frame


def greedy_actions(q_network, stacks: np.ndarray, game_ids: torch.Tensor, support, device) -> np.ndarray:
    """argmax_a Q(s, a) for every game's current stack [games, 4, 84, 84]; `game_ids`: their global ids."""
    with torch.no_grad():
        return q_values(q_network(torch.as_tensor(stacks, device=device), game_ids), support).argmax(-1).cpu().numpy()


def human_normalized(game: str, score: float) -> Optional[float]:
    """(score - random) / (human - random); None for a game without reference scores."""
    if game not in REFERENCE_SCORES:
        return None
    random_score, human_score = REFERENCE_SCORES[game]
    return (score - random_score) / (human_score - random_score)


def interquartile_mean(values) -> float:
    """Mean of the middle 50%: drop int(n/4) scores at each end (scipy.stats.trim_mean(x, 0.25), as rliable)."""
    values, cut = np.sort(values), len(values) // 4
    return float(values[cut : len(values) - cut].mean())


def score_summary(scores: dict) -> tuple[dict, dict]:
    """Human-normalised scores of the games with reference scores, and the mean return with, where there are any,
    the mean / median / IQM of the human-normalised scores."""
    hns = {game: human_normalized(game, score) for game, score in scores.items()}
    hns = {game: value for game, value in hns.items() if value is not None}
    summary = {"mean_return": float(np.mean(list(scores.values())))}
    if hns:
        known = list(hns.values())
        summary |= {"hns_mean": np.mean(known), "hns_median": np.median(known), "hns_iqm": interquartile_mean(known)}
    return hns, summary


def evaluate(
    q_network, envs, game_ids, num_episodes, epsilon, support, device, seed, video_dir=None, stop=None
) -> dict:
    """Mean score of each game of `envs` (global ids `game_ids`) over `num_episodes` whole games (no life-loss
    terminals); games step in lockstep. When `stop()` turns true (Ctrl-C), the evaluation ends after the current
    episode, with the mean so far."""
    scores = np.zeros((len(envs), num_episodes))
    rng = np.random.default_rng(seed)  # evaluation's own epsilon-greedy exploration
    num_actions = envs[0].num_actions
    for episode in range(num_episodes):
        ids = game_ids.tolist()
        first_frames = [env.reset(seed=seed + 1000 * game if episode == 0 else None) for game, env in zip(ids, envs)]
        stacks = np.stack([np.repeat(frame[None], FRAME_STACK, 0) for frame in first_frames])
        done = np.zeros(len(envs), bool)
        frames = [[] for _ in envs]  # for the video
        while not done.all():
            actions = greedy_actions(q_network, stacks, game_ids, support, device)
            explore = rng.random(len(envs)) < epsilon
            actions = np.where(explore, rng.integers(num_actions, size=len(envs)), actions)
            for i, env in enumerate(envs):
                if done[i]:
                    continue
                if video_dir is not None and episode == 0:
                    frames[i].append(env.render())
                frame, reward, terminated, truncated, _ = env.step(actions[i])
                push_frame(stacks[i], frame)
                scores[i, episode] += reward
                done[i] = terminated or truncated
        if video_dir is not None and episode == 0:
            run_utils.save_videos(video_dir, {env.game: env_frames for env, env_frames in zip(envs, frames)}, fps=15)
        if stop is not None and stop():
            scores = scores[:, : episode + 1]
            break
    return {env.game: score for env, score in zip(envs, scores.mean(axis=1))}


# ---- Training loop ----
@dataclass
class LoopState:
    """The training loop's own variables, carried from one step to the next (checkpoints save them)."""

    global_step: int  # environment steps so far; one step = every game takes one action
    obs: np.ndarray  # [games, 4, 84, 84] uint8: every game's current frame stack
    first: np.ndarray  # [games] does obs[i] begin an episode? (the next replay entry then starts one)
    episode_returns: np.ndarray  # [games] the score of every game's current episode so far


def main(args: Args, make_env: Optional[Callable] = None):
    """Train. `make_env(game, seed)` replaces the ALE games (tests pass a tiny pixel game); it must return an
    object with AtariGame's interface: num_actions, game, reset(seed), step(action), render(), get/set_state()."""
    # -- Set-up (not BRC; the helpers are at the end of the file): flags, games, sizes, device, memory --
    args, ckpt = load_flags(args)
    env_ids = resolve_env_ids(args.env_ids) if make_env is None else list(args.env_ids)
    num_games = len(env_ids)
    width = args.critic_width or MODEL_SIZES[args.model_size]
    batch_size = args.batch_size or (256 if num_games > 1 else 64)
    # torchrun: this process owns games [shard.first, shard.stop) and samples shard.batch_size of the batch; else all
    shard = distributed.shard_tasks(num_games, batch_size, args.seed)
    own_games = env_ids[shard.tasks]
    if make_env is None:  # several games share ALE's full 18-action set
        settings = dict(repeat_action_probability=args.repeat_action_probability, noop_max=args.noop_max)
        make_env = partial(
            AtariGame, full_action_space=num_games > 1, max_episode_frames=args.max_episode_frames, **settings
        )
    eval_envs = [make_env(game, args.seed + 10_000 + i) for i, game in enumerate(env_ids)]
    num_actions = eval_envs[0].num_actions
    config = {"env_ids": env_ids, "critic_width": width, "encoder_width": args.encoder_width}
    config |= {"num_bins": args.num_bins, "embedding_dim": args.embedding_dim}
    device, buffer_device, checkpoint_bytes = set_up_device(args, ckpt, config, eval_envs, shard)
    rng = np.random.default_rng(shard.seed)  # epsilon-greedy exploration

    label = env_ids[0] if num_games == 1 else f"{num_games}games"
    with run_utils.Run("bro_atari.py", args, label, METRICS, device, ckpt, checkpoint_bytes) as run:
        # game i's emulator is seeded with seed + i, whichever process owns it
        envs = make_game_envs(make_env, own_games, args.seed + shard.first, args.async_envs)
        run.close_on_exit(envs)
        q_network, target_network, optimizer = make_networks(args, num_games, num_actions, width, device)
        support = torch.linspace(args.v_min, args.v_max, args.num_bins, device=device)
        rb = ReplayBuffer(shard.size, args.buffer_size, buffer_device, shard.first)
        normalizer = RewardNormalizer(shard.size, args.gamma)
        first_frames = envs.reset()[0]  # [games, 84, 84]; the first stack repeats the first frame
        obs = np.repeat(first_frames[:, None], FRAME_STACK, 1)
        loop = LoopState(0, obs, first=np.ones(shard.size, bool), episode_returns=np.zeros(shard.size))
        shared = {"q_network": q_network, "target_network": target_network, "optimizer": optimizer}
        own = {"normalizer": normalizer}  # with the networks, `loop`, envs, RNGs and replay: a checkpoint
        first_update_step = run.restore_or_start(shared, own, loop, rng, envs, rb, config)  # --resume: loaded

        # Each game's reward divisor (G_bar / 10). Unlike bro_mt.py's it has no temperature term, so it changes only
        # when an episode ends (or while a game has finished none): learn() refreshes it then. The sampler applies it,
        # since an n-step return sums several rewards.
        scale = torch.ones(shard.size, device=device)  # (of this process's games: they are all its batches hold)
        scale_stale = True  # refresh it before the next update (an episode ended, or the run (re)started)
        polyak_tau = 0.0 if args.target_network_frequency else args.tau

        def update_step(batch: Batch) -> torch.Tensor:
            return update(batch, q_network, target_network, optimizer, support, polyak_tau)

        update_step = run_utils.fast_update(update_step, args.compile, args.cudagraphs)

        def learn():
            """-- update --: `updates_per_step` updates on fresh batches (refreshing the reward scale first), on every
            `update_every`-th step."""
            nonlocal scale_stale
            if loop.global_step % args.update_every:
                return
            if not args.clip_rewards and (scale_stale or normalizer.needs_fallback()):
                scale.copy_(reward_scale(torch.as_tensor(normalizer.max_abs_return(), dtype=torch.float32)))
                scale_stale = False
            for _ in range(args.updates_per_step):
                batch = rb.sample(shard.batch_size, args.n_step, args.gamma, scale, args.clip_rewards, device)
                run.add_metrics(update_step(batch))

        def progress_scalars() -> dict:
            """The progress line's values besides the losses: epsilon and the reward scales last used."""
            step = loop.global_step - 1  # the step just taken
            epsilon = epsilon_schedule(step, args.learning_starts, args.epsilon_decay_steps, args.epsilon_end)
            scalars = {"charts/epsilon": epsilon}
            if not args.clip_rewards:
                scalars |= {f"charts/reward_scale/{game}": s for game, s in zip(own_games, scale.tolist())}
            return scalars

        game_ids = torch.arange(shard.first, shard.stop, device=device)  # this process's games' global ids
        while loop.global_step < args.total_timesteps and not run.stop_requested:
            # -- act: epsilon-greedy (epsilon is 1 until learning starts) --
            epsilon = epsilon_schedule(
                loop.global_step, args.learning_starts, args.epsilon_decay_steps, args.epsilon_end
            )
            explore = rng.random(shard.size) < epsilon
            actions = rng.integers(num_actions, size=shard.size)
            if not explore.all():
                actions = np.where(explore, actions, greedy_actions(q_network, loop.obs, game_ids, support, device))

            # -- step envs -- (an emulator error or NaN stops the run, saved). With --async-envs the emulators run in
            # worker processes while learn() runs here, on the transitions up to the previous step (a one-step lag).
            overlapped_update = learn if args.async_envs and loop.global_step >= first_update_step else None
            next_frames, rewards, terminations, truncations, infos = run.step_envs_guarded(
                envs, actions, loop.global_step, own_games, while_stepping=overlapped_update
            )

            # -- record -- Where an episode ended, next_frames holds the next episode's first frame; the step's own
            # frame and info are in infos["final_obs"] and infos["final_info"].
            frames = loop.obs[:, -1].copy()  # entry t of the replay: the newest frame of s_t
            terminal = np.zeros(shard.size, bool)
            ended = terminations | truncations
            for i, game in enumerate(own_games):
                life_lost = (infos["final_info"] if ended[i] else infos)["life_lost"][i]
                terminal[i] = terminations[i] or (life_lost and args.terminal_on_life_loss)
                normalizer.record(i, float(rewards[i]))
                loop.episode_returns[i] += rewards[i]
                if terminal[i] or truncations[i]:  # with lives as terminals, each life is an episode of the normaliser
                    normalizer.end_episode(i, terminal[i])
                    scale_stale = True
                if ended[i]:
                    run.log({f"charts/episodic_return/{game}": loop.episode_returns[i]}, loop.global_step)
                    loop.episode_returns[i] = 0
                    loop.obs[i] = next_frames[i]  # the new episode's first stack repeats its first frame
                else:
                    push_frame(loop.obs[i], next_frames[i])

            # -- store: entry t of each game, then the final frame of each truncated episode --
            rb.add(frames, actions, rewards, terminal, loop.first)
            rb.add_final_frames(infos.get("final_obs"), np.flatnonzero(truncations & ~terminations))
            loop.first = ended
            loop.global_step += 1

            # -- update: the first after `learning_starts` transitions (with --async-envs it ran during the step) --
            if not args.async_envs and loop.global_step >= first_update_step:
                learn()
            copy_target = args.target_network_frequency and loop.global_step % args.target_network_frequency == 0
            if loop.global_step >= first_update_step and copy_target:
                target_network.load_state_dict(q_network.state_dict())

            # -- log, save: stop if a loss is not finite, the progress line, a periodic checkpoint --
            run.end_of_step(loop.global_step, progress_scalars, PROGRESS)

            # -- evaluate -- (Ctrl-C ends it after the current episode)
            if loop.global_step % args.eval_interval == 0 or loop.global_step == args.total_timesteps:
                scores = evaluate(
                    q_network,
                    eval_envs[shard.tasks],
                    game_ids,
                    args.eval_episodes,
                    args.eval_epsilon,
                    support,
                    device,
                    args.seed + loop.global_step,
                    run.video_dir(loop.global_step),
                    stop=lambda: run.stop_requested,
                )
                scores = shard.gather(scores)  # torchrun: every process's games, in order
                hns, summary = score_summary(scores)
                run.log_evaluation(loop.global_step, scores, summary, {"human_normalized": hns})
        return run.finish(loop.global_step)


# ---- Not BRC: flags, sizes, memory and the device (a student may skip this section) ----
CHECKPOINT_KEYS = {
    "version", "run_name", "config", "global_step", "q_network", "target_network", "optimizer", "normalizer", "rng",
    "envs", "obs", "first", "episode_returns", "replay_buffer",
}  # fmt: skip

ONE, ZERO, POSITIVE, PROBABILITY = (
    run_utils.Range(1),
    run_utils.Range(0),
    run_utils.Range(0, low_open=True),
    run_utils.Range(0, 1),
)
FLAG_RANGES = {  # every numeric flag's valid values (None, where a flag allows it, means its default)
    "critic_width": ONE, "encoder_width": ONE, "total_timesteps": ONE, "learning_starts": ONE, "buffer_size": ONE,
    "batch_size": ONE, "updates_per_step": ONE, "n_step": ONE, "gamma": run_utils.Range(0, 1, high_open=True),
    "tau": run_utils.Range(0, 1, low_open=True), "target_network_frequency": ZERO, "learning_rate": POSITIVE,
    "weight_decay": ZERO, "epsilon_end": PROBABILITY, "epsilon_decay_steps": ONE, "eval_epsilon": PROBABILITY,
    "num_bins": run_utils.Range(2), "v_min": run_utils.Range(), "v_max": run_utils.Range(), "embedding_dim": ONE,
    "repeat_action_probability": PROBABILITY, "noop_max": ZERO, "max_episode_frames": ONE, "eval_interval": ONE,
    "eval_episodes": ONE, "update_every": ONE,
}  # fmt: skip


# The laptop command (docs/atari.md): one game, a small network and an update every 4th step finish in ~30 minutes on
# one CPU core and learn RoadRunner well above random. The slow-CPU warning suggests the flags a run has not set.
LAPTOP_FLAGS = {
    "env_ids": ["RoadRunner"], "critic_width": 128, "encoder_width": 4, "batch_size": 32, "update_every": 4,
    "learning_starts": 5000, "total_timesteps": 50_000, "epsilon_decay_steps": 20_000, "repeat_action_probability": 0,
    "eval_interval": 10_000, "eval_episodes": 5,
}  # fmt: skip
LAPTOP_MINUTES = 30


def load_flags(args: Args) -> tuple[Args, Optional[dict]]:
    """The flags to run with (a resumed run's own, unless given) and, with --resume, its checkpoint."""
    return run_utils.load_flags(args, "bro_atari", CHECKPOINT_KEYS, check_args)


def check_args(args: Args):
    """Refuse flag values that cannot work before anything heavy starts; each message names the flag and what is valid
    (check_flags adds the ranges and the checks both scripts share)."""
    problems = []
    if args.learning_starts <= args.n_step + FRAME_STACK or args.buffer_size <= args.n_step + FRAME_STACK:
        problems.append(
            f"--learning-starts and --buffer-size must exceed --n-step + {FRAME_STACK} (a sample needs its stack and "
            "its n following entries in the buffer)"
        )
    run_utils.check_flags(args, FLAG_RANGES, problems)


def set_up_device(args: Args, ckpt, config: dict, eval_envs, shard: distributed.TaskShard) -> tuple:
    """Seed torch and pick the device; check a resumed checkpoint against `config`; print the games and model sizes;
    set the thread count; refuse up front what cannot fit in memory and warn about what will crawl. Returns the
    training device, the replay buffer's, and the size of a checkpoint (the run checks the disk for it)."""
    device = run_utils.setup_torch(shard.seed, args.cuda, args.torch_deterministic, args.cudagraphs, args.bf16)
    batch_size = shard.batch_size  # this process's part of the batch (all of it without torchrun)
    if ckpt:
        run_utils.check_config(args.resume, ckpt["config"], config)
    num_games, num_actions = len(eval_envs), eval_envs[0].num_actions
    width = config["critic_width"]
    if any(env.num_actions != num_actions for env in eval_envs):
        raise SystemExit(f"games with different action counts {[env.num_actions for env in eval_envs]}")
    counts = model_parameter_counts(
        num_games, num_actions, width, args.encoder_width, args.num_bins, args.embedding_dim
    )
    model_bytes = 4 * 5 * counts["total"]  # weights, target, gradients, 2 AdamW moments
    encoder_floats = 30_000 * args.encoder_width  # the encoder's feature maps of one sample, ~29k per channel
    sample_floats = encoder_floats + width * (4 * CRITIC_DEPTH + 4) + num_actions * args.num_bins
    model_bytes += 4 * 3 * batch_size * sample_floats  # activations of one update
    buffer_bytes = ReplayBuffer.bytes_needed(shard.size, args.buffer_size)
    replay = f"({run_utils.tasks_here(shard, 'games')} x {args.buffer_size:,} frames)"
    smaller = "--model-size, --encoder-width or --batch-size"
    print(f"games ({num_games}, {num_actions} actions): {', '.join(config['env_ids'])}")
    named = f"--model-size {args.model_size}, named for the head's ~4W^2 = {4 * width**2 / 1e6:.0f}M hidden weights"
    preset = named if not args.critic_width else "custom"
    print(
        f"head width {width} ({preset}), encoder width "
        f"{args.encoder_width}: {counts['total']:,} parameters (encoder {counts['encoder']:,}, BroNet head "
        f"{counts['head']:,}, game embedding {counts['game_embedding']:,}); batch {shard.global_batch_size}"
    )
    run_utils.describe_shards(shard, config["env_ids"])
    encoder_macs = 53e6 * (args.encoder_width / 16) ** 2  # one sample's convolutions (53M at Impala's width 16)
    update_gflop = 10 * batch_size * (encoder_macs + counts["head"]) / 1e9  # ~5 forward passes, 2 FLOP/MAC
    run_utils.set_threads(device, args.threads, update_gflop)
    buffer_device = run_utils.place_replay_buffer(device, model_bytes, buffer_bytes, smaller, replay)
    laptop = [run_utils.as_flag(name, value) for name, value in LAPTOP_FLAGS.items() if getattr(args, name) != value]
    hint = f"try {' '.join(laptop)} (the laptop command, ~{LAPTOP_MINUTES} minutes on one core: docs/atari.md)"
    if not laptop:  # every flag of the laptop command is set, and something else costs more
        hint = "use fewer --updates-per-step or --total-timesteps"
    run_utils.warn_if_slow(device, args.updates_per_step / args.update_every * update_gflop, hint, args.total_timesteps)
    checkpoint_bytes = 4 * 4 * counts["total"] + args.save_buffer * buffer_bytes  # Q, target, 2 AdamW moments
    return device, buffer_device, checkpoint_bytes


if __name__ == "__main__":
    description = """BRC for multi-game Atari from pixels (categorical double DQN with a game embedding).

A small run on a laptop CPU (~30 minutes on one core; an evaluation every 10000 steps, the first after ~3 minutes):
  python bro_atari.py --env-ids RoadRunner --critic-width 128 --encoder-width 4 --batch-size 32 --update-every 4 \\
      --learning-starts 5000 --total-timesteps 50000 --epsilon-decay-steps 20000 --repeat-action-probability 0 \\
      --eval-interval 10000 --eval-episodes 5

A first run on a GPU:  python bro_atari.py --env-ids ATARI_QUICK --model-size 16M

Every run writes runs/{run_name}/ (TensorBoard logs, checkpoint.pt); Ctrl-C saves a checkpoint to --resume from."""
    main(tyro.cli(Args, description=description))
