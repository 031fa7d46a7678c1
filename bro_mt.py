"""BRC for multi-task continuous control on dm_control and MetaWorld, in one file.

BRC -- "Bigger, Regularized, Categorical: High-Capacity Value Functions are Efficient Multi-Task Learners"
(Nauman, Cygan, Sferrazza, Kumar, Abbeel, 2025, arXiv:2505.23150). One SAC agent learns many tasks at once.
Its critic is a wide BroNet ensemble (Bigger, Regularized by LayerNorm and weight decay) that predicts a
distribution over 101 return atoms (Categorical, trained by cross-entropy), conditioned on a learnable task
embedding. Rewards are normalised per task so that every task's returns share one scale.

Map of the file (search for the section markers "# ----"):
  Args ..................... every flag: the algorithm's (defaults = the authors' released code), the ablations,
                             then the ones that only run the experiment
  Tasks .................... how tasks of different sizes share one network (padding, action masks)
  Networks ................. the ensemble and its sites, BroNet, the categorical critic with task embedding, the actor
  Categorical projection ... C51: put the shifted target distribution back on the fixed support
  Losses and the update .... critic cross-entropy, actor, temperature; one update in the paper's order
  Reward normalisation ..... per-task scale from the largest discounted return seen
  Replay buffer ............ per-task ring buffers [tasks, capacity, dim] on the training device
  Evaluation ............... deterministic episodes of every task in lockstep: returns, success rates, videos
  Ablations and transfer ... --critic-loss mse, --task-conditioning multihead, --init-from
  Training loop ............ act -> step envs -> record -> store -> update -> log/save -> evaluate
  Not BRC .................. flag checks, sizes, memory and the device: set-up a student may skip
What is not BRC lives in brc_utils/ and you never need to read it to learn the method: the environment adapters
(brc_utils/envs.py: dm_control and MetaWorld as gymnasium envs, task suites) and the run plumbing (brc_utils/run.py:
run folders, logging and the progress line, signals, checkpoints and exact resume, memory checks, vector envs,
--compile / --cudagraphs). Each call into it in main() is one line whose name says what it does.
"""

import math
import os
from dataclasses import dataclass, field
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
from brc_utils.envs import make_env, make_task_envs, resolve_env_ids


@dataclass
class AlgorithmArgs:
    # Algorithm (defaults: the paper's)
    env_ids: list[str] = field(default_factory=lambda: ["DMC_HARD"])
    """task ids (dog-run, metaworld-reach-v3) and suites (DMC_HARD DMC_DOGS DMC_HUMANOIDS DMC_EASY DMC_TINY MW_MT10 MW_MT50)"""
    model_size: Literal["1M", "4M", "16M", "64M", "256M", "1B"] = "64M"
    """critic preset: its width W (1M: 512 ... 1B: 16384); the label is ~4*W^2, one member's hidden weights"""
    critic_width: Optional[int] = None
    """override the preset's critic width"""
    total_timesteps: int = 1_000_000
    """environment steps; one step = every task's environment steps once"""
    learning_starts: int = 5000
    """random-action steps before the first gradient update"""
    buffer_size: int = 1_000_000
    """replay capacity per task (transitions)"""
    batch_size: Optional[int] = None
    """batch size of an update (None: 1024 with several tasks, 256 with one task)"""
    updates_per_step: int = 2
    """gradient updates per environment step (replay ratio)"""
    gamma: float = 0.99
    """the discount factor"""
    tau: float = 0.005
    """Polyak averaging rate of the target critic"""
    learning_rate: float = 3e-4
    """AdamW learning rate of actor and critic"""
    weight_decay: float = 1e-4
    """AdamW weight decay of actor and critic"""
    alpha_lr: float = 3e-4
    """Adam learning rate of the temperature"""
    init_temperature: float = 0.1
    """initial entropy temperature alpha"""
    num_bins: int = 101
    """atoms of the categorical critic's support"""
    v_min: float = -10.0
    """lowest atom of the support (returns are normalised to about [-10, 10])"""
    v_max: float = 10.0
    """highest atom of the support"""
    embedding_dim: int = 32
    """size of the learnable task embedding (multi-task only)"""
    eval_interval: int = 50_000
    """evaluate every N environment steps (and at the end)"""
    eval_episodes: int = 10
    """deterministic evaluation episodes per task"""
    max_episode_steps: Optional[int] = None
    """cut episodes after N steps (None: dm_control's own 1000, MetaWorld 200 as released); a truncation bootstraps"""
    metaworld_goals: Literal["fixed", "random"] = "fixed"
    """MetaWorld object and goal positions: fixed, one per task and seed (the released code); random, new each episode"""

    # Ablations and transfer
    critic_loss: Literal["categorical", "mse"] = "categorical"
    """categorical: a distribution over the support trained by cross-entropy (BRC); mse: one output, squared TD error"""
    task_conditioning: Literal["embedding", "multihead", "none"] = "embedding"
    """how the critic knows the task: a learned embedding (BRC), one output head per task, or not at all"""
    reward_norm: bool = True
    """divide each task's rewards by its return-based scale (BRC); --no-reward-norm trains on raw rewards"""
    init_from: Optional[str] = None
    """transfer: start the critic (trunk, head) and actor from a multi-task checkpoint; new tasks get new embeddings"""
    freeze_trunk: bool = False
    """with --init-from: keep the pretrained critic trunk fixed (the embeddings, the head and the actor still learn)"""


@dataclass
class Args(run_utils.RunArgs, AlgorithmArgs):
    """Every flag: the algorithm's above, then those that only run the experiment (seed, logging, checkpoints, speed),
    which bro_atari.py shares (run_utils.RunArgs). A dataclass lists its bases' fields from the right, so --help
    shows the algorithm's flags first."""

    exp_name: str = "bro_mt"


MODEL_SIZES = {"1M": 512, "4M": 1024, "16M": 2048, "64M": 4096, "256M": 8192, "1B": 16384}
CRITIC_DEPTH, ACTOR_WIDTH, ACTOR_DEPTH, ENSEMBLE_SIZE = 2, 256, 1, 2


# ---- Tasks ----
# Task ids are dm_control's `domain-task` (dog-run) and MetaWorld's `metaworld-<task>-v3`; suites name lists of them
# (DMC_HARD, DMC_EASY, MW_MT10, ...). Both, and the env adapters, live in brc_utils/envs.py: not BRC.
#
# How tasks of different sizes share one network. Every task's observation is zero-padded to the largest one (pad_to
# of the env adapters, brc_utils/envs.py), and the actor emits the largest action size, of which task i's env uses the first |A_i|.
# The released code stops there; we go further, so that padded dims carry no signal and cost no entropy:
#   - action_masks[i] is 1 on task i's own dims: actions are multiplied by it wherever they are drawn (the actor,
#     the random-action phase), stored in the replay buffer or fed to the critic;
#   - log pi(a|s) sums over the task's own dims only (Actor.sample);
#   - the target entropy is -|A_i| / 2 for a sample of task i, not -max|A| / 2 (temperature_loss, reward_scale).
# With equal action sizes all of this is exactly the released behaviour.
def action_masks_and_target_entropy(action_sizes: list[int], action_dim: int, device) -> tuple:
    """[tasks, action_dim] masks (1 on each task's own action dims) and the per-task target entropy -|A_i| / 2."""
    action_masks = torch.zeros(len(action_sizes), action_dim, device=device)
    for i, size in enumerate(action_sizes):
        action_masks[i, :size] = 1
    return action_masks, -action_masks.sum(-1) / 2


# ---- Networks ----
# The critic is an ensemble of ENSEMBLE_SIZE = 2 members with independent weights, run as one batched network:
#   - EnsembleLinear / EnsembleLayerNorm hold every member's weights stacked, [members, in, out], in one matmul;
#   - Critic.forward feeds the same input to every member (x.expand) and returns [members, batch, bins];
#   - critic_loss: the target is the mean of the target members' distributions; each member's cross-entropy is
#     summed, so every member learns the same target on its own weights;
#   - q_value: Q is the expectation of the members' *mean* distribution. BRC averages the members where SAC and TD3
#     take min(Q1, Q2): with a categorical critic on normalised returns the paper found the pessimistic min
#     unnecessary, and the mean keeps the whole distribution (the released code does the same).
# The actor is a one-member ensemble, so that it reuses the same layers.
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


def make_task_embedding(num_tasks: int, embedding_dim: int) -> nn.Embedding:
    """One learnable vector per task, initialised as flax's nn.Embed (the released code): N(0, 1/embedding_dim) per
    entry, so each row starts with norm ~1. Only its direction is used (unit-normalised), and Adam moves each entry by
    about the learning rate whatever the gradient's size: with torch's default N(0, 1) (norm ~sqrt(embedding_dim))
    the directions would turn ~sqrt(embedding_dim) times slower per update."""
    embedding = nn.Embedding(num_tasks, embedding_dim)
    nn.init.normal_(embedding.weight, std=embedding_dim**-0.5)
    return embedding


class Critic(nn.Module):
    """Categorical critic ensemble conditioned on a learnable task embedding.

    Each member maps [obs, action, task_embedding] to logits over the return support. The critic owns the
    embedding: only the critic loss trains it, and the actor reads a detached copy. conditioning="none" (the default
    with one task) gives neither network the task. bf16=True (--bf16) runs the matmuls in bfloat16 and returns
    float32 logits.
    """

    def __init__(
        self, obs_dim, action_dim, num_tasks, width, num_bins=101, embedding_dim=32, conditioning=None, bf16=False
    ):
        super().__init__()
        self.conditioning = conditioning or ("embedding" if num_tasks > 1 else "none")
        self.members, self.num_tasks, self.num_bins, self.bf16 = ENSEMBLE_SIZE, num_tasks, num_bins, bf16
        has_embedding = self.conditioning == "embedding"
        self.task_embedding = make_task_embedding(num_tasks, embedding_dim) if has_embedding else None
        self.embedding_dim = embedding_dim if has_embedding else 0  # the width of embed(): what the actor reads
        self.trunk = BroNet(self.members, obs_dim + action_dim + self.embedding_dim, width, CRITIC_DEPTH)
        self.head = EnsembleLinear(self.members, width, num_bins)

    def embed(self, task_ids: torch.Tensor) -> torch.Tensor:
        """Unit-length task embeddings [batch, embedding_dim] (zero-width without conditioning)."""
        if self.task_embedding is None:
            return torch.zeros(len(task_ids), 0, device=task_ids.device)
        return F.normalize(self.task_embedding(task_ids), dim=-1)

    def forward(self, obs, action, task_ids) -> torch.Tensor:
        task_input = self.embed(task_ids) if self.task_embedding is not None else obs[:, :0]
        x = torch.cat([obs, action, task_input], dim=-1)
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            out = self.head(self.trunk(x.expand(self.members, *x.shape)))  # [members, batch, num_bins]
        return out.to(x.dtype)  # softmax, projection and loss in float32, not bfloat16 (a no-op without --bf16)


LOG_STD_MIN, LOG_STD_MAX = -10.0, 2.0  # the actor's log-std range, as the released code


class Actor(nn.Module):
    """SAC actor: a one-member BroNet on [obs, task_embedding], a tanh-squashed Gaussian over the padded actions."""

    def __init__(self, obs_dim: int, action_dim: int, embedding_dim: int, width: int = ACTOR_WIDTH):
        super().__init__()
        self.trunk = BroNet(1, obs_dim + embedding_dim, width, ACTOR_DEPTH)
        self.mean = EnsembleLinear(1, width, action_dim)
        self.log_std = EnsembleLinear(1, width, action_dim, gain=1.0)

    def forward(self, obs, task_embedding):
        h = self.trunk(torch.cat([obs, task_embedding], dim=-1)[None])
        # squashed into [LOG_STD_MIN, LOG_STD_MAX]: -10 + 6 * (1 + tanh(x)) with the released bounds
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (1 + torch.tanh(self.log_std(h)[0]))
        return self.mean(h)[0], log_std

    def sample(self, obs, task_embedding, action_mask):
        """Reparameterised tanh-Gaussian sample and its log-probability over the task's own action dims."""
        mean, log_std = self(obs, task_embedding)
        noise = torch.randn_like(mean)
        pre_tanh = mean + log_std.exp() * noise
        # log N(u; mean, std) - log(1 - tanh(u)^2), the latter written stably as 2(log 2 - u - softplus(-2u))
        log_prob = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
        log_prob = log_prob - 2 * (math.log(2) - pre_tanh - F.softplus(-2 * pre_tanh))
        return torch.tanh(pre_tanh) * action_mask, (log_prob * action_mask).sum(-1)

    def act(self, obs, task_embedding, action_mask):
        """The deterministic evaluation policy: tanh(mean)."""
        return torch.tanh(self(obs, task_embedding)[0]) * action_mask


def make_critic(conditioning: str, obs_dim, action_dim, num_tasks, width, num_bins, embedding_dim, bf16=False):
    """The critic --task-conditioning asks for: BRC's task embedding, the multihead ablation, or none."""
    if conditioning == "multihead":
        return MultiHeadCritic(obs_dim, action_dim, num_tasks, width, num_bins, bf16=bf16)
    return Critic(obs_dim, action_dim, num_tasks, width, num_bins, embedding_dim, conditioning=conditioning, bf16=bf16)


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


# ---- Losses and the update ----
class Batch(NamedTuple):
    obs: torch.Tensor  # [batch, obs_dim], zero-padded to the largest task
    actions: torch.Tensor  # [batch, action_dim], padded dims zero
    rewards: torch.Tensor  # [batch], raw; normalised in the loss
    next_obs: torch.Tensor
    terminations: torch.Tensor  # [batch], 1.0 only on a true termination
    task_ids: torch.Tensor  # [batch], int64


def q_value(critic_out: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """Q [batch] from the critic's logits [members, batch, bins]: the expectation of the members' mean distribution.

    The mean, not min(Q1, Q2) as in SAC and TD3: see the ensemble's comment under Networks."""
    return (critic_out.softmax(-1).mean(0) * support).sum(-1)


def critic_loss(critic, target_critic, actor, log_alpha, batch, action_mask, reward_scale, support, gamma):
    """Cross-entropy between each member's distribution and the projected soft Bellman target.

    Target: mean over target members of softmax(logits(s', a')), atoms moved to r + gamma*m*(z - alpha*log pi(a'|s')).
    Returns the loss (summed over members, mean over the batch) and the mean Q of the online critic.
    """
    with torch.no_grad():
        next_actions, next_log_probs = actor.sample(batch.next_obs, critic.embed(batch.task_ids), action_mask)
        next_probs = target_critic(batch.next_obs, next_actions, batch.task_ids).softmax(-1).mean(0)  # [batch, bins]
        rewards = batch.rewards / reward_scale
        bootstrap = gamma * (1 - batch.terminations)
        entropy_bonus = -log_alpha.exp() * next_log_probs
        target_atoms = rewards[:, None] + bootstrap[:, None] * (support + entropy_bonus[:, None])  # [batch, bins]
        target_probs = categorical_projection(target_atoms, next_probs, support)
    out = critic(batch.obs, batch.actions, batch.task_ids)  # [members, batch, bins]
    loss = -(target_probs * out.log_softmax(-1)).sum(-1).mean(-1).sum()
    return loss, q_value(out.detach(), support).mean()


def actor_loss(actor, critic, log_alpha, obs, task_ids, action_mask, support, q_fn=q_value):
    """SAC actor loss mean(alpha * log pi(a|s) - Q(s, a)), Q = expectation of the members' mean distribution."""
    actions, log_probs = actor.sample(obs, critic.embed(task_ids).detach(), action_mask)
    q = q_fn(critic(obs, actions, task_ids), support)
    return (log_alpha.exp().detach() * log_probs - q).mean(), log_probs.detach()


def temperature_loss(log_alpha, log_probs, target_entropy):
    """alpha * (H - H_target), per sample, with H_target = -|A_i|/2 for a sample of task i."""
    return (log_alpha.exp() * (-log_probs - target_entropy)).mean()


class Nets(NamedTuple):
    """The networks and their optimisers, one bundle for update(); the field names are the checkpoint's keys."""

    critic: nn.Module  # Critic (or an ablation's), owns the task embedding
    target_critic: nn.Module  # Polyak average of the critic, for the Bellman target
    actor: nn.Module
    log_alpha: torch.Tensor  # the entropy temperature, alpha = exp(log_alpha)
    critic_optimizer: torch.optim.Optimizer
    actor_optimizer: torch.optim.Optimizer
    alpha_optimizer: torch.optim.Optimizer


class Losses(NamedTuple):
    """The critic loss and the Q estimate an update uses: BRC's by default; the MSE ablation swaps in its own."""

    critic: Callable
    q_value: Callable


def update(batch, nets, action_masks, target_entropy, reward_scales, support, gamma, tau, losses=None):
    """One BRC update in the paper's order: critic -> Polyak target -> actor -> temperature.

    `reward_scales` [tasks] divide each task's rewards (reward_scale, computed once per environment step); None means
    raw rewards (--no-reward-norm). Returns [critic loss, actor loss, temperature loss, entropy, mean Q] as one tensor,
    with no host sync. `losses`: BRC's categorical ones unless an ablation gives its own (MSE_LOSSES).
    """
    losses = losses or Losses(critic_loss, q_value)
    action_mask = action_masks[batch.task_ids]
    scale = reward_scales[batch.task_ids] if reward_scales is not None else 1.0
    critic_args = (nets.critic, nets.target_critic, nets.actor, nets.log_alpha, batch, action_mask, scale, support)
    loss_q, q_mean = losses.critic(*critic_args, gamma)
    nets.critic_optimizer.zero_grad(set_to_none=True)
    loss_q.backward()
    # torchrun: each process's gradients -> their mean over the processes, weighted by each one's share of the global
    # batch, so that every process takes the same step as one process on the union of the batches. The only place
    # processes meet in an update; in one process these calls do nothing.
    distributed.average_gradients(nets.critic_optimizer)
    nets.critic_optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(nets.target_critic.parameters()), list(nets.critic.parameters()), tau)

    actor_args = (nets.actor, nets.critic, nets.log_alpha, batch.obs, batch.task_ids, action_mask, support)
    loss_pi, log_probs = actor_loss(*actor_args, losses.q_value)
    nets.actor_optimizer.zero_grad(set_to_none=True)
    loss_pi.backward(inputs=list(nets.actor.parameters()))  # through the critic, but gradients for the actor only
    distributed.average_gradients(nets.actor_optimizer)
    nets.actor_optimizer.step()

    loss_alpha = temperature_loss(nets.log_alpha, log_probs, target_entropy[batch.task_ids])
    nets.alpha_optimizer.zero_grad(set_to_none=True)
    loss_alpha.backward()
    distributed.average_gradients(nets.alpha_optimizer)
    nets.alpha_optimizer.step()
    return torch.stack([loss_q, loss_pi, loss_alpha, -log_probs.mean(), q_mean]).detach()


def make_nets(args, conditioning, obs_dim, action_dim, num_tasks, width, device, pretrained=None) -> Nets:
    """Critic, target critic, actor, temperature and their optimisers, for --critic-loss and --task-conditioning;
    `pretrained`: a multi-task checkpoint to start from (--init-from, see transfer)."""
    num_bins = args.num_bins if args.critic_loss == "categorical" else 1
    sizes = (obs_dim, action_dim, num_tasks, width, num_bins, args.embedding_dim, args.bf16)
    with run_utils.announce("initialising the networks"):  # (a 64M critic takes minutes on a CPU)
        critic = make_critic(conditioning, *sizes).to(device)
        target_critic = make_critic(conditioning, *sizes).to(device)
        actor = Actor(obs_dim, action_dim, critic.embedding_dim).to(device)
    if pretrained:
        transfer(pretrained, critic, actor)
        critic.trunk.requires_grad_(not args.freeze_trunk)
    target_critic.load_state_dict(critic.state_dict())
    target_critic.requires_grad_(False)
    log_alpha = torch.tensor(math.log(args.init_temperature), device=device, requires_grad=True)
    rates = (args.learning_rate, args.weight_decay, args.alpha_lr, args.cudagraphs)
    return Nets(critic, target_critic, actor, log_alpha, *make_optimizers(critic, actor, log_alpha, *rates))


def make_optimizers(critic, actor, log_alpha, lr, weight_decay, alpha_lr, capturable=False) -> tuple:
    """AdamW for the critic (its trainable weights, task embedding included) and for the actor; Adam with betas
    (0.5, 0.999) for the temperature. fused: torch's one-kernel Adam(W), the same update as the per-tensor code up to
    float rounding and ~15% faster small updates on a CPU core. capturable: a CUDA graph (--cudagraphs) needs it."""
    adamw = dict(lr=lr, weight_decay=weight_decay, fused=True, capturable=capturable)
    critic_optimizer = torch.optim.AdamW([p for p in critic.parameters() if p.requires_grad], **adamw)
    actor_optimizer = torch.optim.AdamW(actor.parameters(), **adamw)
    alpha_optimizer = torch.optim.Adam([log_alpha], alpha_lr, betas=(0.5, 0.999), fused=True, capturable=capturable)
    return critic_optimizer, actor_optimizer, alpha_optimizer


METRICS = ["losses/critic_loss", "losses/actor_loss", "losses/alpha_loss", "charts/entropy", "charts/q_mean"]
PROGRESS = (
    "critic {losses/critic_loss:.3f} actor {losses/actor_loss:.3f} alpha {charts/alpha:.4f} Q {charts/q_mean:.2f}"
)


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


def reward_scale(max_abs_return, alpha, target_entropy, gamma):
    """Divisor of each task's rewards: (G_bar_i + alpha*|H_target_i|/(2(1-gamma))) / 10, so returns span ~[-10, 10].

    As in the released loop, it is computed once per environment step, with the temperature from before that step's
    updates, and all of the step's updates use it."""
    return ((max_abs_return + alpha * target_entropy.abs() / (2 * (1 - gamma))) / 10).clamp(min=1e-8)


# ---- Replay buffer ----
class ReplayBuffer:
    """Per-task ring buffers shaped [tasks, capacity, dim]; every step writes one transition of every task.

    Sampling is uniform over (task, index) pairs. Raw rewards are stored; normalisation happens in the loss.
    """

    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, action_dim: int, device, first_task: int = 0):
        self.num_tasks, self.capacity, self.device = num_tasks, capacity, torch.device(device)
        self.first_task = first_task  # global id of the first task (torchrun: each process holds its own tasks)
        shape = (num_tasks, capacity)
        self.obs = torch.zeros(*shape, obs_dim, device=device)
        self.actions = torch.zeros(*shape, action_dim, device=device)
        self.rewards = torch.zeros(shape, device=device)
        self.next_obs = torch.zeros(*shape, obs_dim, device=device)
        self.terminations = torch.zeros(shape, device=device)
        self.pos, self.size = 0, 0

    @staticmethod
    def bytes_needed(num_tasks: int, capacity: int, obs_dim: int, action_dim: int) -> int:
        return 4 * num_tasks * capacity * (2 * obs_dim + action_dim + 2)

    def add(self, obs, actions, rewards, next_obs, terminations):
        """Store one transition per task (numpy arrays with the task as first axis)."""
        for buf, value in zip(self._fields(), (obs, actions, rewards, next_obs, terminations)):
            buf[:, self.pos] = torch.as_tensor(value, dtype=torch.float32, device=self.device)
        self.pos = (self.pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, device) -> Batch:
        task_ids = torch.randint(self.num_tasks, (batch_size,), device=self.device)
        index = torch.randint(self.size, (batch_size,), device=self.device)
        fields = [buf[task_ids, index].to(device, non_blocking=True) for buf in self._fields()]
        return Batch(*fields, (task_ids + self.first_task).to(device, non_blocking=True))

    def _fields(self):
        return self.obs, self.actions, self.rewards, self.next_obs, self.terminations

    def state_dict(self) -> dict:
        data = [buf[:, : self.size].cpu() for buf in self._fields()]
        return {"pos": self.pos, "size": self.size, "capacity": self.capacity, "data": data}

    def load_state_dict(self, state: dict):
        """Restore a saved ring as it was (so that sampling continues exactly), or into a ring of another capacity
        (a run continued with a longer --total-timesteps gets a larger one): oldest first, the newest that fit."""
        pos, size = state["pos"], state["size"]
        if state.get("capacity", self.capacity) == self.capacity:
            self.pos, self.size = pos, size
            for buf, saved in zip(self._fields(), state["data"]):
                buf[:, :size] = saved.to(self.device)
            return
        keep = min(size, self.capacity)
        for buf, saved in zip(self._fields(), state["data"]):
            oldest_first = saved if pos == size else saved.roll(-pos, dims=1)  # a full ring's oldest is at pos
            buf[:, :keep] = oldest_first[:, size - keep :].to(self.device)
        self.pos, self.size = keep % self.capacity, keep


# ---- Evaluation ----
def evaluate(
    actor, critic, envs, task_ids, obs_dim, num_episodes, action_masks, device, seed, video_dir=None, stop=None
):
    """Mean return and success rate (the share of episodes with a success at any step; 0 for tasks that report
    none) over `num_episodes` deterministic episodes per task of `envs` (whose global ids are `task_ids`); all tasks
    step in lockstep. When `stop()` turns true (Ctrl-C), the evaluation ends after the current episode, with the
    means of the episodes played."""
    returns, successes = np.zeros((len(envs), num_episodes)), np.zeros((len(envs), num_episodes))
    masks = action_masks[task_ids]  # [envs, action_dim]
    for episode in range(num_episodes):
        obs = np.zeros((len(envs), obs_dim), np.float32)
        for i, (env, task) in enumerate(zip(envs, task_ids.tolist())):
            o, _ = env.reset(seed=seed + 1000 * task if episode == 0 else None)
            obs[i, : len(o)] = o
        done = np.zeros(len(envs), bool)
        frames = [[] for _ in envs]
        while not done.all():
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, device=device)
                actions = actor.act(obs_t, critic.embed(task_ids), masks).cpu().numpy()
            for i, env in enumerate(envs):
                if done[i]:
                    continue
                if video_dir is not None and episode == 0:
                    frames[i].append(env.render())
                o, r, terminated, truncated, info = env.step(actions[i, : env.action_space.shape[0]])
                obs[i, : len(o)] = o
                returns[i, episode] += r
                successes[i, episode] = max(successes[i, episode], info.get("success", False))
                done[i] = terminated or truncated
        if video_dir is not None and episode == 0:
            run_utils.save_videos(video_dir, {env.env_id: env_frames for env, env_frames in zip(envs, frames)}, fps=30)
        if stop is not None and stop():
            return returns[:, : episode + 1].mean(axis=1), successes[:, : episode + 1].mean(axis=1)
    return returns.mean(axis=1), successes.mean(axis=1)


def evaluation_summary(env_ids: list, returns: np.ndarray, successes: np.ndarray) -> tuple[dict, dict, dict]:
    """What an evaluation logs: returns per task and their mean; MetaWorld's success rates and their mean."""
    metaworld = [i for i, task in enumerate(env_ids) if task.startswith("metaworld-")]
    summary, per_task = {"mean_return": returns.mean()}, {}
    if metaworld:
        summary["success_rate"] = successes[metaworld].mean()
        per_task["success"] = {env_ids[i]: successes[i] for i in metaworld}
    return dict(zip(env_ids, returns)), summary, per_task


# ---- Ablations and transfer (not on BRC's default path) ----
def mse_q_value(critic_out: torch.Tensor, support=None) -> torch.Tensor:
    """--critic-loss mse: Q [batch] is the members' mean of their single outputs [members, batch, 1]."""
    return critic_out[..., 0].mean(0)


def mse_critic_loss(critic, target_critic, actor, log_alpha, batch, action_mask, reward_scale, support, gamma):
    """--critic-loss mse: each member's single output regresses on r + gamma*m*(Q_target(s', a') - alpha*log pi(a'|s'))
    (the members' mean of the target critic). Returns the loss (summed over members) and the mean Q."""
    with torch.no_grad():
        next_actions, next_log_probs = actor.sample(batch.next_obs, critic.embed(batch.task_ids), action_mask)
        next_q = mse_q_value(target_critic(batch.next_obs, next_actions, batch.task_ids))
        bootstrap = gamma * (1 - batch.terminations)
        target_q = batch.rewards / reward_scale + bootstrap * (next_q - log_alpha.exp() * next_log_probs)
    out = critic(batch.obs, batch.actions, batch.task_ids)  # [members, batch, 1]
    return (out[..., 0] - target_q).pow(2).mean(-1).sum(), mse_q_value(out.detach()).mean()


MSE_LOSSES = Losses(critic=mse_critic_loss, q_value=mse_q_value)  # update(..., losses=MSE_LOSSES)


class MultiHeadCritic(Critic):
    """--task-conditioning multihead: one output head per task on a shared trunk that is not told the task; each
    sample reads its own task's head. The actor reads a one-hot task id."""

    def __init__(self, obs_dim, action_dim, num_tasks, width, num_bins=101, bf16=False):
        super().__init__(obs_dim, action_dim, num_tasks, width, num_bins, conditioning="none", bf16=bf16)
        self.conditioning, self.embedding_dim = "multihead", num_tasks
        self.head = EnsembleLinear(self.members, width, num_tasks * num_bins)  # one block of num_bins per task

    def embed(self, task_ids: torch.Tensor) -> torch.Tensor:
        return F.one_hot(task_ids, self.num_tasks).float()

    def forward(self, obs, action, task_ids) -> torch.Tensor:
        x = torch.cat([obs, action], dim=-1)  # the trunk is not told the task
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.bf16):
            out = self.head(self.trunk(x.expand(self.members, *x.shape)))  # [members, batch, tasks * num_bins]
        rows = torch.arange(len(task_ids), device=task_ids.device)
        out = out.view(self.members, len(task_ids), self.num_tasks, self.num_bins)[:, rows, task_ids]
        return out.float()  # [members, batch, num_bins]: each sample's own task's head


def load_pretrained(path: str, config: dict) -> tuple[dict, int, int]:
    """--init-from: the pretrained checkpoint, checked against this run's `config`, and the padded observation and
    action sizes of its networks (the new tasks are padded to them; they must not be larger)."""
    source = run_utils.load_checkpoint(path, "bro_mt", CHECKPOINT_KEYS, "--init-from")
    keys = ["critic_width", "critic_loss", "num_bins", "embedding_dim"]
    run_utils.check_config(
        path, source["config"], {k: config[k] for k in keys} | {"task_conditioning": "embedding"}, "--init-from"
    )
    obs_dim, action_dim = source["config"]["obs_dim"], source["config"]["action_dim"]
    if config["task_conditioning"] != "embedding" or config["obs_dim"] > obs_dim or config["action_dim"] > action_dim:
        raise SystemExit(
            f"--init-from {path}: the pretrained networks take observations of up to {obs_dim} and actions of up to "
            f"{action_dim} dims with a task embedding; these tasks need {config['obs_dim']} and {config['action_dim']}"
        )
    return source, obs_dim, action_dim


def transfer(ckpt: dict, critic: Critic, actor: Actor):
    """--init-from: copy a pretrained critic (trunk and head) and actor into a run on new tasks.

    Each new task's embedding starts at the mean of the pretrained unit embeddings (an "average known task" that the
    pretrained head already maps to sensible values; its norm, at most 1, is that of a fresh row) plus 10% noise,
    so that several new tasks can tell themselves apart. Optimisers, temperature and reward statistics start fresh: the new tasks' returns are new.
    """
    pretrained = ckpt["critic"]
    critic.load_state_dict({k: v for k, v in pretrained.items() if k != "task_embedding.weight"}, strict=False)
    with torch.no_grad():
        mean = F.normalize(pretrained["task_embedding.weight"], dim=-1).mean(0).to(critic.task_embedding.weight)
        noise = torch.randn_like(critic.task_embedding.weight) * 0.1 * mean.norm() / math.sqrt(len(mean))
        critic.task_embedding.weight.copy_(mean + noise)
    actor.load_state_dict(ckpt["actor"])


# ---- Training loop ----
@dataclass
class LoopState:
    """The training loop's own variables, carried from one step to the next (checkpoints save them)."""

    global_step: int  # environment steps so far; one step = every task's env steps once
    obs: np.ndarray  # [tasks, obs_dim] every task's current observation, zero-padded
    episode_returns: np.ndarray  # [tasks] the return of every task's current episode so far


def main(args: Args):
    # -- Set-up (not BRC; the helpers are at the end of the file): flags, tasks, sizes, device, memory --
    args, ckpt = load_flags(args)
    env_ids = resolve_env_ids(args.env_ids)
    num_tasks = len(env_ids)
    width = args.critic_width or MODEL_SIZES[args.model_size]
    batch_size = args.batch_size or (1024 if num_tasks > 1 else 256)
    # torchrun: this process owns tasks [shard.first, shard.stop) and samples shard.batch_size of the batch; else all
    shard = distributed.shard_tasks(num_tasks, batch_size, args.seed)
    own_ids = env_ids[shard.tasks]
    eval_envs = [
        make_env(task, args.seed + 10_000 + i, args.max_episode_steps, metaworld_goals=args.metaworld_goals)
        for i, task in enumerate(env_ids)
    ]
    action_sizes = [env.action_size for env in eval_envs]
    obs_dim, action_dim = max(env.obs_size for env in eval_envs), max(action_sizes)
    # One task needs no conditioning, except in transfer, where the pretrained critic expects an embedding.
    conditioning = args.task_conditioning if num_tasks > 1 or args.init_from else "none"
    config = run_config(args, env_ids, width, conditioning, obs_dim, action_dim)
    pretrained = None
    if args.init_from:  # the new tasks are padded to the pretrained networks' sizes
        pretrained, obs_dim, action_dim = load_pretrained(args.init_from, config)
        config |= {"obs_dim": obs_dim, "action_dim": action_dim}
    device, buffer_device, checkpoint_bytes = set_up_device(args, ckpt, config, eval_envs, shard)
    action_masks, target_entropy = action_masks_and_target_entropy(action_sizes, action_dim, device)
    rng = np.random.default_rng(shard.seed)  # random actions before learning starts

    label = env_ids[0] if num_tasks == 1 else f"{num_tasks}tasks"
    with run_utils.Run("bro_mt.py", args, label, METRICS, device, ckpt, checkpoint_bytes) as run:
        pad_to = (obs_dim, action_dim)
        seed = args.seed + shard.first  # task i's env is seeded with seed + i, whichever process owns it
        envs = make_task_envs(own_ids, seed, args.max_episode_steps, pad_to, args.metaworld_goals, args.async_envs)
        run.close_on_exit(envs, *eval_envs)
        nets = make_nets(args, conditioning, obs_dim, action_dim, num_tasks, width, device, pretrained)
        support = torch.linspace(args.v_min, args.v_max, args.num_bins, device=device)
        rb = ReplayBuffer(shard.size, replay_capacity(args), obs_dim, action_dim, buffer_device, shard.first)
        normalizer = RewardNormalizer(shard.size, args.gamma)
        loop = LoopState(global_step=0, obs=envs.reset()[0], episode_returns=np.zeros(shard.size))
        own = {"normalizer": normalizer}  # with nets, `loop`, envs, RNGs and replay: a checkpoint
        first_update_step = run.restore_or_start(nets._asdict(), own, loop, rng, envs, rb, config)  # --resume: loaded

        # Each task's reward divisor, changed in place (a CUDA graph reads it from a fixed address); None: raw rewards.
        reward_scales = torch.ones(num_tasks, device=device) if args.reward_norm else None
        losses = Losses(critic_loss, q_value) if args.critic_loss == "categorical" else MSE_LOSSES

        def update_step(batch: Batch) -> torch.Tensor:
            return update(
                batch, nets, action_masks, target_entropy, reward_scales, support, args.gamma, args.tau, losses
            )

        update_step = run_utils.fast_update(update_step, args.compile, args.cudagraphs)

        def learn():
            """-- update --: this step's reward scales (with the temperature before its updates), then
            `updates_per_step` updates on fresh batches. The scales are refreshed every step, since they include
            the temperature, which every update changes (bro_atari.py's have no such term: it refreshes them less)."""
            if args.reward_norm:  # (of this process's tasks: they are all its batches hold)
                g_bar = torch.as_tensor(normalizer.max_abs_return(), dtype=torch.float32, device=device)
                alpha = nets.log_alpha.detach().exp()
                reward_scales[shard.tasks] = reward_scale(g_bar, alpha, target_entropy[shard.tasks], args.gamma)
            for _ in range(args.updates_per_step):
                run.add_metrics(update_step(rb.sample(shard.batch_size, device)))

        def progress_scalars() -> dict:
            """The progress line's values besides the losses: the temperature and the reward scales last used."""
            scalars = {"charts/alpha": nets.log_alpha.exp().item()}
            if args.reward_norm:
                scales = reward_scales[shard.tasks].tolist()
                scalars |= {f"charts/reward_scale/{task}": scale for task, scale in zip(own_ids, scales)}
            return scalars

        task_ids = torch.arange(shard.first, shard.stop, device=device)  # this process's tasks' global ids
        own_masks = action_masks[task_ids]
        random_action_mask = own_masks.cpu().numpy()
        while loop.global_step < args.total_timesteps and not run.stop_requested:
            # -- act --
            if loop.global_step < args.learning_starts:
                actions = rng.uniform(-1, 1, (shard.size, action_dim)).astype(np.float32) * random_action_mask
            else:
                with torch.no_grad():
                    obs = torch.as_tensor(loop.obs, device=device)
                    actions = nets.actor.sample(obs, nets.critic.embed(task_ids), own_masks)[0].cpu().numpy()

            # -- step envs -- (a simulator error or NaN stops the run, saved). With --async-envs the simulators run in
            # worker processes while learn() runs here, on the transitions up to the previous step (a one-step lag).
            overlapped_update = learn if args.async_envs and loop.global_step >= first_update_step else None
            next_obs, rewards, terminations, truncations, infos = run.step_envs_guarded(
                envs, actions, loop.global_step, own_ids, while_stepping=overlapped_update
            )

            # -- record -- Where an episode ended, next_obs is already the next episode's first observation (the
            # vector env resets it); the true last one is in infos["final_obs"], the last step's info in "final_info".
            real_next_obs = next_obs.copy()
            for i, task in enumerate(own_ids):
                normalizer.record(i, float(rewards[i]))
                loop.episode_returns[i] += rewards[i]
                if terminations[i] or truncations[i]:
                    real_next_obs[i] = infos["final_obs"][i]
                    normalizer.end_episode(i, bool(terminations[i]))
                    episode = {f"charts/episodic_return/{task}": loop.episode_returns[i]}
                    if task.startswith("metaworld-"):  # the adapter says whether any step of the episode succeeded
                        episode[f"charts/success/{task}"] = float(infos["final_info"]["episode_success"][i])
                    run.log(episode, loop.global_step)
                    loop.episode_returns[i] = 0

            # -- store (the true final observation, even when the episode ended) --
            rb.add(loop.obs, actions, rewards, real_next_obs, terminations)
            loop.obs = next_obs
            loop.global_step += 1

            # -- update: the first after `learning_starts` transitions (with --async-envs it ran during the step) --
            if not args.async_envs and loop.global_step >= first_update_step:
                learn()

            # -- log, save: stop if a loss is not finite, the progress line, a periodic checkpoint --
            run.end_of_step(loop.global_step, progress_scalars, PROGRESS)

            # -- evaluate -- (Ctrl-C ends it after the current episode)
            if loop.global_step % args.eval_interval == 0 or loop.global_step == args.total_timesteps:
                returns, successes = evaluate(
                    nets.actor,
                    nets.critic,
                    eval_envs[shard.tasks],
                    task_ids,
                    obs_dim,
                    args.eval_episodes,
                    action_masks,
                    device,
                    args.seed + loop.global_step,
                    run.video_dir(loop.global_step),
                    stop=lambda: run.stop_requested,
                )
                returns, successes = shard.gather((returns, successes))  # torchrun: every process's tasks, in order
                run.log_evaluation(loop.global_step, *evaluation_summary(env_ids, returns, successes))
        return run.finish(loop.global_step)


# ---- Not BRC: flags, sizes, memory and the device (a student may skip this section) ----
CHECKPOINT_KEYS = {
    "version", "run_name", "config", "global_step", "actor", "critic", "target_critic", "log_alpha", "actor_optimizer",
    "critic_optimizer", "alpha_optimizer", "normalizer", "rng", "envs", "obs", "episode_returns", "replay_buffer",
}  # fmt: skip

ONE, ZERO, POSITIVE = run_utils.Range(1), run_utils.Range(0), run_utils.Range(0, low_open=True)
FLAG_RANGES = {  # every numeric flag's valid values (None, where a flag allows it, means its default)
    "critic_width": ONE, "total_timesteps": ONE, "learning_starts": ONE, "buffer_size": ONE, "batch_size": ONE,
    "updates_per_step": ONE, "gamma": run_utils.Range(0, 1, high_open=True), "tau": run_utils.Range(0, 1, low_open=True),
    "learning_rate": POSITIVE, "weight_decay": ZERO, "alpha_lr": POSITIVE, "init_temperature": POSITIVE,
    "num_bins": run_utils.Range(2), "v_min": run_utils.Range(), "v_max": run_utils.Range(), "embedding_dim": ONE,
    "eval_interval": ONE, "eval_episodes": ONE, "max_episode_steps": ONE,
}  # fmt: skip


def load_flags(args: Args) -> tuple[Args, Optional[dict]]:
    """The flags to run with (a resumed run's own, unless given) and, with --resume, its checkpoint."""
    return run_utils.load_flags(args, "bro_mt", CHECKPOINT_KEYS, check_args)


def check_args(args: Args):
    """Refuse flag values that cannot work before anything heavy starts; each message names the flag and what is valid
    (check_flags adds the ranges and the checks both scripts share)."""
    problems = []
    if args.freeze_trunk and not args.init_from:
        problems.append("--freeze-trunk keeps a pretrained trunk fixed: use it with --init-from")
    run_utils.check_flags(args, FLAG_RANGES, problems)


def run_config(args: Args, env_ids, width, conditioning, obs_dim, action_dim) -> dict:
    """What a checkpoint's networks and buffers were built for: a resume or a transfer must match it."""
    config = {"env_ids": env_ids, "critic_width": width, "critic_loss": args.critic_loss}
    config |= {"task_conditioning": conditioning, "num_bins": args.num_bins, "embedding_dim": args.embedding_dim}
    return config | {"obs_dim": obs_dim, "action_dim": action_dim}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_parameter_counts(obs_dim, action_dim, num_tasks, width, num_bins=101, embedding_dim=32, conditioning=None):
    """Exact parameter counts, built on the meta device so that even the 1B preset allocates nothing."""
    conditioning = conditioning or ("embedding" if num_tasks > 1 else "none")
    with torch.device("meta"):
        critic = make_critic(conditioning, obs_dim, action_dim, num_tasks, width, num_bins, embedding_dim)
        actor = Actor(obs_dim, action_dim, critic.embedding_dim)
    ensemble = count_parameters(critic)
    embedding = count_parameters(critic.task_embedding) if critic.task_embedding is not None else 0
    member = (ensemble - embedding) // critic.members
    return {
        "critic_member": member,
        "critic_ensemble": ensemble,
        "task_embedding": embedding,
        "actor": count_parameters(actor),
    }


def replay_capacity(args: Args) -> int:
    """Transitions per task the ring holds: --buffer-size, but no more than the run can store (one per step). The
    ring never wraps in such a run either way, so this saves memory without changing what is sampled."""
    return min(args.buffer_size, args.total_timesteps)


def set_up_device(args: Args, ckpt, config: dict, eval_envs, shard: distributed.TaskShard) -> tuple:
    """Seed torch and pick the device; check a resumed checkpoint against `config`; print the tasks and model sizes;
    set the thread count; refuse up front what cannot fit in memory and warn about what will crawl. Returns the
    training device, the replay buffer's, and the size of a checkpoint (the run checks the disk for it)."""
    device = run_utils.setup_torch(shard.seed, args.cuda, args.torch_deterministic, args.cudagraphs, args.bf16)
    batch_size = shard.batch_size  # this process's part of the batch (all of it without torchrun)
    if ckpt:
        run_utils.check_config(args.resume, ckpt["config"], config)
    num_tasks, width = len(eval_envs), config["critic_width"]
    obs_dim, action_dim = config["obs_dim"], config["action_dim"]
    num_bins = args.num_bins if args.critic_loss == "categorical" else 1
    sizes = (obs_dim, action_dim, num_tasks, width, num_bins, args.embedding_dim, config["task_conditioning"])
    counts = model_parameter_counts(*sizes)
    model_bytes = 4 * (5 * counts["critic_ensemble"] + 4 * counts["actor"])  # weights, target, grads, 2 Adam moments
    activation_bytes = 4 * 3 * ENSEMBLE_SIZE * batch_size * width * (4 * CRITIC_DEPTH + 4)
    buffer_bytes = ReplayBuffer.bytes_needed(shard.size, replay_capacity(args), obs_dim, action_dim)
    replay = f"({run_utils.tasks_here(shard, 'tasks')} x {replay_capacity(args):,} transitions)"
    tasks = ", ".join(f"{env.env_id} (obs {env.obs_size}, act {env.action_size})" for env in eval_envs)
    print(f"tasks ({num_tasks}): {tasks}")
    named = f"--model-size {args.model_size}, named for ~4W^2 = {4 * width**2 / 1e6:.0f}M hidden weights per member"
    preset = named if not args.critic_width else "custom"
    print(
        f"critic width {width} ({preset}): {counts['critic_member']:,} parameters per member, "
        f"{counts['critic_ensemble']:,} for the ensemble of {ENSEMBLE_SIZE} (task embedding "
        f"{counts['task_embedding']:,}); actor {counts['actor']:,}; batch {shard.global_batch_size}"
    )
    run_utils.describe_shards(shard, config["env_ids"])
    update_gflop = 13 * ENSEMBLE_SIZE * batch_size * counts["critic_member"] / 1e9  # ~6.5 forward passes, 2 FLOP/MAC
    run_utils.set_threads(device, args.threads, update_gflop)
    smaller = "--model-size or --batch-size"
    buffer_device = run_utils.place_replay_buffer(device, model_bytes + activation_bytes, buffer_bytes, smaller, replay)
    smaller = [
        f for f, bigger in (("--critic-width 128", width > 128), ("--batch-size 128", batch_size > 128)) if bigger
    ]
    hint = f"try {' '.join(smaller)}" if smaller else "use fewer --total-timesteps"
    run_utils.warn_if_slow(device, args.updates_per_step * update_gflop, hint, args.total_timesteps)
    if args.capture_video:
        run_utils.check_rendering(eval_envs[0].render)
    # critic, target and 2 Adam moments; actor and 2 moments; with --save-buffer the replay buffer
    checkpoint_bytes = 4 * (4 * counts["critic_ensemble"] + 3 * counts["actor"]) + args.save_buffer * buffer_bytes
    return device, buffer_device, checkpoint_bytes


if __name__ == "__main__":
    description = """BRC for multi-task continuous control on dm_control and MetaWorld (SAC with a categorical BroNet
critic).

A small run on a laptop CPU (~20 minutes; an evaluation every 5000 steps, the first after ~5 minutes):
  python bro_mt.py --env-ids DMC_TINY --critic-width 128 --batch-size 128 --learning-starts 1000 \\
      --total-timesteps 20000 --eval-interval 5000 --eval-episodes 3

The defaults are the paper's setting (64M critic, 7 dog and humanoid tasks, 1M steps): that needs a GPU.
MetaWorld: --env-ids MW_MT10 (or MW_MT50, or metaworld-reach-v3 ...).

Every run writes runs/{run_name}/ (TensorBoard logs, checkpoint.pt); Ctrl-C saves a checkpoint to --resume from."""
    main(tyro.cli(Args, description=description))
