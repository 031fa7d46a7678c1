"""Unit tests of bro_mt.py: every check compares against a hand-computed value or an independent reference."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

import bro_mt
from brc_utils import envs as brc_envs
from bro_mt import (
    Actor,
    Batch,
    Critic,
    EnsembleLinear,
    ReplayBuffer,
    RewardNormalizer,
    actor_loss,
    categorical_projection,
    critic_loss,
    model_parameter_counts,
    resolve_env_ids,
    returns_to_go,
    reward_scale,
    temperature_loss,
)

torch.set_num_threads(1)  # tiny tensors; threads only add overhead on a shared 2-core machine


# ---------------------------------------------------------------------------------------------------------------
# 1. Categorical projection
# ---------------------------------------------------------------------------------------------------------------
def reference_projection(target_atoms, probs, v_min, v_max):
    """Plain per-sample, per-atom C51 projection (Bellemare et al., 2017), in Python floats."""
    batch, bins = len(probs), len(probs[0])
    dz = (v_max - v_min) / (bins - 1)
    out = [[0.0] * bins for _ in range(batch)]
    for i in range(batch):
        for j in range(bins):
            z = min(max(float(target_atoms[i][j]), v_min), v_max)
            b = (z - v_min) / dz
            lo, hi = math.floor(b), math.ceil(b)
            p = float(probs[i][j])
            if lo == hi:
                out[i][lo] += p
            else:
                out[i][lo] += p * (hi - b)
                out[i][hi] += p * (b - lo)
    return torch.tensor(out, dtype=torch.float64)


def random_distribution(batch, bins, generator=None, dtype=torch.float32):
    x = torch.rand(batch, bins, generator=generator, dtype=dtype)
    return x / x.sum(-1, keepdim=True)


def test_projection_conserves_mass():
    torch.manual_seed(0)
    support = torch.linspace(-10, 10, 101)
    probs = random_distribution(64, 101)
    atoms = torch.randn(64, 101) * 8  # many atoms outside [-10, 10] too
    out = categorical_projection(atoms, probs, support)
    assert out.shape == probs.shape
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(64), atol=1e-5, rtol=0)


def test_projection_identity_and_exact_shift_float64():
    """Atoms exactly on support points keep all their mass (float64 support: the logic, free of rounding)."""
    support = torch.linspace(-10, 10, 101, dtype=torch.float64)
    eye = torch.eye(101, dtype=torch.float64)
    out = categorical_projection(support.expand(101, 101).clone(), eye, support)
    torch.testing.assert_close(out, eye, atol=1e-9, rtol=0)
    # r = 0, gamma * m = 1, alpha = 0: a random distribution maps to itself
    probs = random_distribution(8, 101, dtype=torch.float64)
    torch.testing.assert_close(
        categorical_projection(support.expand(8, 101).clone(), probs, support), probs, atol=1e-9, rtol=0
    )


@pytest.mark.parametrize("k", [1, 3, -2])
def test_projection_shift_by_k_atoms(k):
    """Uniform mass shifted by exactly k atoms: the k atoms that leave the range pile up on the end atom."""
    support = torch.linspace(-10, 10, 101, dtype=torch.float64)
    probs = torch.full((1, 101), 1 / 101, dtype=torch.float64)
    out = categorical_projection(support[None] + k * 0.2, probs, support)[0]
    expected = torch.full((101,), 1 / 101, dtype=torch.float64)
    if k > 0:
        expected[:k] = 0
        expected[-1] = (k + 1) / 101
    else:
        expected[k:] = 0
        expected[0] = (-k + 1) / 101
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=0)


def test_projection_identity_float32():
    """With the float32 support the run uses, an atom exactly on support[j] keeps its mass there (to ~1e-5)."""
    support = torch.linspace(-10, 10, 101)
    eye = torch.eye(101)
    out = categorical_projection(support.expand(101, 101).clone(), eye, support)
    torch.testing.assert_close(out, eye, atol=1e-5, rtol=0)


def test_projection_clips_both_ends():
    support = torch.linspace(-10, 10, 101)
    probs = random_distribution(4, 101)
    low = categorical_projection(torch.full((4, 101), -1e3), probs, support)
    high = categorical_projection(torch.full((4, 101), 55.0), probs, support)
    torch.testing.assert_close(low[:, 0], torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(high[:, -1], torch.ones(4), atol=1e-5, rtol=0)
    assert low[:, 1:].abs().max() < 1e-6 and high[:, :-1].abs().max() < 1e-6
    # half of the atoms far below, half far above
    atoms = torch.cat([torch.full((4, 50), -30.0), torch.full((4, 51), 30.0)], -1)
    out = categorical_projection(atoms, probs, support)
    torch.testing.assert_close(out[:, 0], probs[:, :50].sum(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, -1], probs[:, 50:].sum(-1), atol=1e-5, rtol=0)
    assert out[:, 1:-1].abs().max() < 1e-6


def test_projection_terminal_collapses_onto_reward():
    """Bootstrap 0: every atom moves to r; r = 0.05 on a spacing-0.2 support -> 0.75 on atom 0.0, 0.25 on 0.2."""
    support = torch.linspace(-1, 1, 11, dtype=torch.float64)  # spacing 0.2, atom 5 is 0.0
    probs = random_distribution(3, 11, dtype=torch.float64)
    gamma_m = 0.0
    atoms = 0.05 + gamma_m * (support[None] - 0.3 * torch.randn(3, 1, dtype=torch.float64))
    out = categorical_projection(atoms.expand(3, 11).clone(), probs, support)
    expected = torch.zeros(3, 11, dtype=torch.float64)
    expected[:, 5], expected[:, 6] = 0.75, 0.25
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=0)
    # negative reward -0.13 on the same support: position (1 - 0.13) / 0.2 = 4.35 -> 0.65 on atom 4, 0.35 on atom 5
    out = categorical_projection(torch.full((3, 11), -0.13, dtype=torch.float64), probs, support)
    expected = torch.zeros(3, 11, dtype=torch.float64)
    expected[:, 4], expected[:, 5] = 0.65, 0.35
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=0)
    # the run's float32 101-atom support: r = 0.05 lies a quarter of the way from atom 50 (0.0) to atom 51 (0.2)
    support32 = torch.linspace(-10, 10, 101)
    out = categorical_projection(torch.full((2, 101), 0.05), random_distribution(2, 101), support32)
    assert abs(out[0, 50].item() - 0.75) < 1e-3 and abs(out[0, 51].item() - 0.25) < 1e-3
    assert out[:, 50:52].sum(-1).sub(1).abs().max() < 1e-5


def test_projection_nan_target_stays_in_bounds():
    """A NaN target (diverged run) must not index outside the support; it shows up as NaN, other rows untouched."""
    support = torch.linspace(-10, 10, 101)
    probs = random_distribution(3, 101)
    atoms = support.expand(3, 101).clone() * 0.5
    atoms[1, 7] = float("nan")
    out = categorical_projection(atoms, probs, support)
    assert torch.isnan(out[1]).any()
    assert torch.isfinite(out[[0, 2]]).all()
    torch.testing.assert_close(out[[0, 2]], categorical_projection(atoms[[0, 2]], probs[[0, 2]], support))


# float32 rounding of the positions moves a unit of mass by up to ~1e-5.
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_projection_matches_reference_loop(dtype, atol):
    g = torch.Generator().manual_seed(3)
    support = torch.linspace(-10, 10, 101, dtype=dtype)
    probs = random_distribution(16, 101, generator=g, dtype=dtype)
    rewards = torch.randn(16, 1, generator=g, dtype=dtype) * 3
    discount = torch.rand(16, 1, generator=g, dtype=dtype) * (torch.rand(16, 1, generator=g) > 0.2).to(dtype)
    entropy_shift = torch.randn(16, 1, generator=g, dtype=dtype) * 2
    atoms = rewards + discount * (support[None] * 1.3 - entropy_shift)  # x1.3: atoms beyond both ends
    assert (atoms < -10).any() and (atoms > 10).any()
    out = categorical_projection(atoms, probs, support)
    expected = reference_projection(atoms.tolist(), probs.tolist(), -10.0, 10.0)
    torch.testing.assert_close(out.double(), expected, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# 2. Critic ensemble, BroNet, parameter counts, init
# ---------------------------------------------------------------------------------------------------------------
def reference_bronet_member(bronet, m, x):
    """One member of a bro_mt.BroNet evaluated on its own with plain torch ops and its slice of the stacked weights."""

    def linear(layer, h):
        return h @ layer.weight[m] + layer.bias[m, 0]

    def ln(norm, h):
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        return (h - mu) / torch.sqrt(var + 1e-6) * norm.weight[m, 0] + norm.bias[m, 0]

    h = torch.relu(ln(bronet.norm, linear(bronet.linear, x)))
    for block in bronet.blocks:
        h = h + ln(block.norm2, linear(block.linear2, torch.relu(ln(block.norm1, linear(block.linear1, h)))))
    return h


def reference_critic_logits(critic, obs, action, task_ids):
    """[members, batch, bins] from a Python loop over members, embedding normalised by hand."""
    if critic.task_embedding is not None:
        e = critic.task_embedding.weight[task_ids]
        x = torch.cat([obs, action, e / e.pow(2).sum(-1, keepdim=True).sqrt()], -1)
    else:
        x = torch.cat([obs, action], -1)
    outs = []
    for m in range(critic.members):
        h = reference_bronet_member(critic.trunk, m, x)
        outs.append(h @ critic.head.weight[m] + critic.head.bias[m, 0])
    return torch.stack(outs)


def randomise_norms(module, seed=0):
    """Give the LayerNorm scales/shifts and biases non-trivial values, so that the test sees them used per member."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_critic_ensemble_matches_per_member_reference():
    torch.manual_seed(0)
    critic = Critic(obs_dim=7, action_dim=3, num_tasks=4, width=16, num_bins=101, embedding_dim=8)
    randomise_norms(critic)
    obs, act, ids = torch.randn(10, 7), torch.rand(10, 3) * 2 - 1, torch.randint(4, (10,))
    logits = critic(obs, act, ids)
    assert logits.shape == (2, 10, 101)
    torch.testing.assert_close(logits, reference_critic_logits(critic, obs, act, ids), atol=1e-5, rtol=1e-5)
    # the two members really are different networks
    assert (logits[0] - logits[1]).abs().max() > 1e-2
    for name, p in critic.named_parameters():
        if p.dim() == 3 and p.shape[0] == 2 and "weight" in name and "norm" not in name:
            assert not torch.allclose(p[0], p[1]), name


def test_critic_single_task_has_no_embedding():
    torch.manual_seed(0)
    critic = Critic(obs_dim=5, action_dim=2, num_tasks=1, width=8)
    assert critic.task_embedding is None and critic.embedding_dim == 0
    assert critic.trunk.linear.weight.shape == (2, 7, 8)
    ids = torch.zeros(4, dtype=torch.long)
    assert critic.embed(ids).shape == (4, 0)
    obs, act = torch.randn(4, 5), torch.randn(4, 2)
    torch.testing.assert_close(
        critic(obs, act, ids), reference_critic_logits(critic, obs, act, ids), atol=1e-5, rtol=1e-5
    )


def test_task_embedding_is_unit_norm():
    torch.manual_seed(0)
    critic = Critic(obs_dim=5, action_dim=2, num_tasks=6, width=8, embedding_dim=32)
    with torch.no_grad():
        critic.task_embedding.weight.mul_(torch.arange(1, 7.0)[:, None])  # different raw norms per task
    e = critic.embed(torch.arange(6))
    assert e.shape == (6, 32)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(6), atol=1e-6, rtol=0)
    raw = critic.task_embedding.weight
    torch.testing.assert_close(e, raw / raw.norm(dim=-1, keepdim=True))


def test_task_embedding_starts_as_flax_and_turns_at_adams_pace():
    """Rows start N(0, 1/d) per entry (flax's nn.Embed), so with norm ~1. Adam's first step moves every entry of a
    task in the batch by the learning rate whatever the gradient's size, so a row turns in inverse proportion to its
    norm: the same rows scaled to torch's default size (norm ~sqrt(d)) turn ~sqrt(d) times slower."""
    torch.manual_seed(0)
    table = bro_mt.make_task_embedding(400, 32).weight.detach()
    assert abs(table.std().item() - 32**-0.5) < 0.01 and abs(table.norm(dim=-1).mean().item() - 1) < 0.03

    def turn_after_one_update(scale: float):
        torch.manual_seed(1)
        critic, actor = Critic(5, 2, 3, 16, embedding_dim=32), Actor(5, 2, 32)
        with torch.no_grad():
            critic.task_embedding.weight.mul_(scale)
        before = critic.task_embedding.weight.detach().clone()
        log_alpha = torch.tensor(math.log(0.1), requires_grad=True)
        optimizers = (
            torch.optim.AdamW(critic.parameters(), 3e-4, weight_decay=1e-4),
            torch.optim.AdamW(actor.parameters(), 3e-4, weight_decay=1e-4),
            torch.optim.Adam([log_alpha], 3e-4, betas=(0.5, 0.999)),
        )
        g = torch.Generator().manual_seed(2)
        batch = Batch(torch.randn(64, 5, generator=g), torch.rand(64, 2, generator=g) * 2 - 1,
                      torch.randn(64, generator=g), torch.randn(64, 5, generator=g), torch.zeros(64),
                      torch.arange(64) % 3)  # fmt: skip
        target = Critic(5, 2, 3, 16, embedding_dim=32).requires_grad_(False)
        masks, support = torch.ones(3, 2), torch.linspace(-10, 10, 101)
        nets = bro_mt.Nets(critic, target, actor, log_alpha, *optimizers)
        bro_mt.update(batch, nets, masks, -masks.sum(-1) / 2, None, support, 0.99, 0.005)
        after = critic.task_embedding.weight.detach()
        cosine = F.cosine_similarity(before.double(), after.double(), dim=-1).clamp(max=1)  # float64: tiny angles
        return after - before, torch.rad2deg(torch.acos(cosine)), before.norm(dim=-1)

    step, turn, norm = turn_after_one_update(1.0)
    # AdamW's first step: lr * sign(gradient) (|gradient| >> eps here), plus weight decay lr * 1e-4 * entry
    torch.testing.assert_close(step.abs(), torch.full_like(step, 3e-4), rtol=0.01, atol=0)
    _, slow_turn, slow_norm = turn_after_one_update(32**0.5)
    torch.testing.assert_close(slow_norm / norm, torch.full_like(norm, 32**0.5))
    torch.testing.assert_close(turn / slow_turn, (slow_norm / norm).double(), rtol=0.02, atol=0)


def hand_member_count(in_features, width, bins=101, depth=2):
    stem = in_features * width + width + 2 * width
    block = 2 * (width * width + width) + 2 * 2 * width
    return stem + depth * block + width * bins + bins


def hand_actor_count(in_features, action_dim, width=256):
    return hand_member_count(in_features, width, bins=0, depth=1) + 2 * (width * action_dim + action_dim)


@pytest.mark.parametrize("preset", list(bro_mt.MODEL_SIZES))
def test_parameter_counts_every_preset(preset):
    width = bro_mt.MODEL_SIZES[preset]
    assert width == {"1M": 512, "4M": 1024, "16M": 2048, "64M": 4096, "256M": 8192, "1B": 16384}[preset]
    for obs, act, tasks in [(223, 38, 4), (67, 21, 7), (5, 1, 1)]:
        emb = 32 if tasks > 1 else 0
        counts = model_parameter_counts(obs, act, tasks, width)
        member = hand_member_count(obs + act + emb, width)
        assert counts["critic_member"] == member
        assert counts["task_embedding"] == tasks * emb
        assert counts["critic_ensemble"] == 2 * member + tasks * emb
        assert counts["actor"] == hand_actor_count(obs + emb, act)
    if width >= 2048:  # the label is ~4 W^2, one member's four hidden W x W layers
        member = model_parameter_counts(223, 38, 4, width)["critic_member"]
        assert abs(member / (4 * width**2) - 1) < 0.10


def test_parameter_counts_match_real_modules():
    """The meta-device count equals the count of modules actually built on the CPU (small width)."""
    counts = model_parameter_counts(11, 3, 5, 24)
    critic = Critic(11, 3, 5, 24)
    actor = Actor(11, 3, critic.embedding_dim)
    assert counts["critic_ensemble"] == sum(p.numel() for p in critic.parameters())
    assert counts["actor"] == sum(p.numel() for p in actor.parameters())
    assert counts["critic_member"] == hand_member_count(11 + 3 + 32, 24)


def test_orthogonal_init_and_zero_bias():
    torch.manual_seed(0)
    gain = math.sqrt(2)
    square = EnsembleLinear(3, 16, 16)
    for m in range(3):
        w = square.weight[m]
        torch.testing.assert_close(w.T @ w, gain**2 * torch.eye(16), atol=1e-5, rtol=0)
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(16), atol=1e-5, rtol=0)
    assert not torch.allclose(square.weight[0], square.weight[1])
    wide = EnsembleLinear(2, 8, 32)  # in < out: the 8 input directions are orthogonal, each of length gain
    for m in range(2):
        w = wide.weight[m]  # [in, out]
        torch.testing.assert_close(w @ w.T, gain**2 * torch.eye(8), atol=1e-5, rtol=0)
    narrow = EnsembleLinear(2, 32, 8, gain=1.0)
    for m in range(2):
        w = narrow.weight[m]
        torch.testing.assert_close(w.T @ w, torch.eye(8), atol=1e-5, rtol=0)
    for layer in (square, wide, narrow):
        assert torch.count_nonzero(layer.bias) == 0
    # the actor's log-std head has gain 1, its mean head gain sqrt(2)
    actor = Actor(6, 4, 0, width=32)
    torch.testing.assert_close(actor.log_std.weight[0].T @ actor.log_std.weight[0], torch.eye(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(actor.mean.weight[0].T @ actor.mean.weight[0], 2 * torch.eye(4), atol=1e-5, rtol=0)
    critic = Critic(6, 2, 3, 16)
    for name, p in list(critic.named_parameters()) + list(actor.named_parameters()):
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name


# ---------------------------------------------------------------------------------------------------------------
# 3. Actor
# ---------------------------------------------------------------------------------------------------------------
def make_actor(obs_dim=6, action_dim=4, emb=8, seed=0):
    torch.manual_seed(seed)
    actor = Actor(obs_dim, action_dim, emb, width=32)
    randomise_norms(actor, seed)
    return actor


def replay_sample(actor, obs, emb, action_mask, seed):
    """Run Actor.sample under `seed`, then rebuild its pre-tanh sample from the same noise.

    Returns the float32 pre-tanh sample (as the actor computes it) and mean, std and pre-tanh sample in float64
    (rebuilt from the same noise: recovering the noise as (u - mean) / std from float32 values would lose
    precision for std as small as e^-10).
    """
    torch.manual_seed(seed)
    actions, log_prob = actor.sample(obs, emb, action_mask)
    with torch.no_grad():
        mean, log_std = actor(obs, emb)
    torch.manual_seed(seed)
    noise = torch.randn_like(mean)
    pre_tanh = mean + log_std.exp() * noise
    mean64, std64 = mean.double(), log_std.double().exp()
    return actions, log_prob, pre_tanh, mean64, std64, mean64 + std64 * noise.double()


def test_actor_log_prob_matches_torch_distributions():
    actor = make_actor()
    obs, emb = torch.randn(32, 6), F.normalize(torch.randn(32, 8), dim=-1)
    mask = torch.ones(32, 4)
    actions, log_prob, u, mean64, std64, u64 = replay_sample(actor, obs, emb, mask, seed=5)
    torch.testing.assert_close(actions, torch.tanh(u))
    tanh = TanhTransform(cache_size=1)
    dist = TransformedDistribution(Normal(mean64, std64), [tanh])
    y = tanh(u64)  # caches (u, y), so log_prob inverts exactly to the same pre-tanh sample
    expected = dist.log_prob(y).sum(-1)
    torch.testing.assert_close(log_prob.double(), expected, atol=1e-4, rtol=1e-5)
    # and the textbook formula log N(u) - sum log(1 - tanh(u)^2), in float64
    textbook = (Normal(mean64, std64).log_prob(u64) - torch.log1p(-(torch.tanh(u64) ** 2))).sum(-1)
    torch.testing.assert_close(log_prob.double(), textbook, atol=1e-4, rtol=1e-5)


def test_actor_log_prob_is_stable_for_saturated_actions():
    """Pre-tanh values far from 0 (tanh(u) rounds to +-1 in float32) still give the exact, finite log-prob."""
    actor = make_actor()
    with torch.no_grad():
        actor.mean.bias.fill_(12.0)  # |u| ~ 12: 1 - tanh(u)^2 ~ 1.5e-10, below float32's resolution at 1
    obs, emb, mask = torch.randn(8, 6), torch.zeros(8, 8), torch.ones(8, 4)
    _, log_prob, u, mean64, std64, u64 = replay_sample(actor, obs, emb, mask, seed=1)
    assert torch.isfinite(log_prob).all()
    assert (torch.tanh(u).abs() == 1).any()  # the naive log(1 - tanh(u)^2) would be -inf here in float32
    textbook = (
        Normal(mean64, std64).log_prob(u64) - (math.log(4) - 2 * u64.abs() - 2 * torch.log1p(torch.exp(-2 * u64.abs())))
    ).sum(-1)
    torch.testing.assert_close(log_prob.double(), textbook, atol=1e-3, rtol=1e-5)


def test_actor_padded_dims_are_zero_and_excluded_from_log_prob():
    actor = make_actor(action_dim=5)
    obs, emb = torch.randn(6, 6), F.normalize(torch.randn(6, 8), dim=-1)
    sizes = torch.tensor([2, 5, 3, 1, 5, 2])
    mask = (torch.arange(5)[None] < sizes[:, None]).float()
    actions, log_prob, u, mean64, std64, u64 = replay_sample(actor, obs, emb, mask, seed=2)
    for i, k in enumerate(sizes.tolist()):
        assert (actions[i, k:] == 0).all()
        torch.testing.assert_close(actions[i, :k], torch.tanh(u[i, :k]))
        sub = TransformedDistribution(Normal(mean64[i, :k], std64[i, :k]), [TanhTransform(cache_size=1)])
        y = sub.transforms[0](u64[i, :k])
        torch.testing.assert_close(log_prob[i].double(), sub.log_prob(y).sum(), atol=1e-4, rtol=1e-5)
    # the log-prob of a task does not depend on what the padded dims would have drawn
    full_mask = torch.ones(6, 5)
    _, full_log_prob, *_ = replay_sample(actor, obs, emb, full_mask, seed=2)
    assert not torch.allclose(full_log_prob, log_prob)


def test_actor_log_std_range_and_formula():
    actor = make_actor()
    obs, emb = torch.randn(16, 6) * 5, torch.randn(16, 8)
    _, log_std = actor(obs, emb)
    assert log_std.min() >= -10 and log_std.max() <= 2
    raw = actor.log_std(actor.trunk(torch.cat([obs, emb], -1)[None]))[0]
    torch.testing.assert_close(log_std, -10 + 6 * (1 + torch.tanh(raw)))
    with torch.no_grad():
        actor.log_std.bias.fill_(100.0)
    torch.testing.assert_close(actor(obs, emb)[1], torch.full((16, 4), 2.0))
    with torch.no_grad():
        actor.log_std.bias.fill_(-100.0)
    torch.testing.assert_close(actor(obs, emb)[1], torch.full((16, 4), -10.0))


def test_actor_act_is_masked_tanh_mean():
    actor = make_actor()
    obs, emb = torch.randn(4, 6), torch.randn(4, 8)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)
    mean = actor.mean(actor.trunk(torch.cat([obs, emb], -1)[None]))[0]
    torch.manual_seed(0)
    a1 = actor.act(obs, emb, mask)
    a2 = actor.act(obs, emb, mask)
    torch.testing.assert_close(a1, torch.tanh(mean) * mask)
    assert torch.equal(a1, a2)
    assert (a1[mask == 0] == 0).all()


# ---------------------------------------------------------------------------------------------------------------
# 4. Reward normalisation
# ---------------------------------------------------------------------------------------------------------------
def test_returns_to_go_by_hand():
    np.testing.assert_allclose(returns_to_go([1, 2, 3], 0.5, 0.0), [2.75, 3.5, 3.0])
    # bootstrap 4: G2 = 3 + 2 = 5, G1 = 2 + 2.5 = 4.5, G0 = 1 + 2.25 = 3.25
    np.testing.assert_allclose(returns_to_go([1, 2, 3], 0.5, 4.0), [3.25, 4.5, 5.0])
    assert returns_to_go([1.0], 0.9, 10.0).dtype == np.float64


def test_normalizer_terminated_vs_truncated():
    term = RewardNormalizer(1, gamma=0.5)
    trunc = RewardNormalizer(1, gamma=0.5)
    for r in [1, 2, 3]:
        term.record(0, r)
        trunc.record(0, r)
    term.end_episode(0, terminated=True)  # returns [2.75, 3.5, 3]
    trunc.end_episode(0, terminated=False)  # tail mean 2 / (1 - 0.5) = 4 -> [3.25, 4.5, 5]
    np.testing.assert_allclose(term.max_abs_return(), [3.5])
    np.testing.assert_allclose(trunc.max_abs_return(), [5.0])
    assert term.max_abs_return().dtype == np.float64
    assert not term.needs_fallback() and not trunc.needs_fallback()


def test_normalizer_uses_abs_of_min_for_negative_returns():
    norm = RewardNormalizer(2, gamma=0.5)
    for r in [-4.0, 1.0]:
        norm.record(0, r)
    norm.end_episode(0, terminated=True)  # G1 = 1, G0 = -4 + 0.5 = -3.5 -> G_bar = max(1, 3.5) = 3.5
    for r in [-1.0, 2.0]:
        norm.record(1, r)
    norm.end_episode(1, terminated=True)  # G1 = 2, G0 = -1 + 1 = 0 -> G_bar = 2
    np.testing.assert_allclose(norm.max_abs_return(), [3.5, 2.0])
    # a later, smaller episode does not lower the statistics; a larger one raises them
    norm.record(0, 0.5)
    norm.end_episode(0, terminated=True)
    np.testing.assert_allclose(norm.max_abs_return(), [3.5, 2.0])
    norm.record(1, 7.0)
    norm.end_episode(1, terminated=True)
    np.testing.assert_allclose(norm.max_abs_return(), [3.5, 7.0])


def test_normalizer_fallback_before_first_episode():
    norm = RewardNormalizer(3, gamma=0.5)
    assert norm.needs_fallback()
    g = norm.max_abs_return()  # nothing recorded at all
    assert np.isfinite(g).all() and (g >= 0).all()
    scale = reward_scale(torch.as_tensor(g), 0.1, torch.tensor([-1.0, -2.0, -0.5], dtype=torch.float64), 0.5)
    assert torch.isfinite(scale).all() and (scale > 0).all()
    torch.testing.assert_close(scale, torch.tensor([0.1 * 1 / 1, 0.1 * 2 / 1, 0.1 * 0.5 / 1], dtype=torch.float64) / 10)

    for r in [1, 2, 3]:
        norm.record(0, r)
    norm.record(1, -6.0)
    g = norm.max_abs_return()
    # task 0: partial [1, 2, 3] as if truncated -> max 5; task 1: [-6] with tail -6/(1-0.5) = -12 -> -12; task 2: 0
    np.testing.assert_allclose(g, [5.0, 12.0, 0.0])
    # the partial estimate is only a fallback: the statistics themselves are untouched
    assert np.isinf(norm.max_return).all()

    norm.end_episode(0, terminated=True)  # first real episode of task 0: G_bar 3.5
    assert norm.needs_fallback()  # tasks 1 and 2 still have none
    norm.record(0, 100.0)  # the new, unfinished episode of task 0 must no longer matter
    g = norm.max_abs_return()
    np.testing.assert_allclose(g, [3.5, 12.0, 0.0])
    norm.end_episode(1, terminated=False)
    norm.end_episode(2, terminated=True)
    assert not norm.needs_fallback()
    np.testing.assert_allclose(norm.max_abs_return(), [3.5, 12.0, 0.0])


def test_normalizer_tasks_are_independent():
    norm = RewardNormalizer(2, gamma=0.9)
    for r in [1.0, 0.5]:
        norm.record(1, r)
    norm.end_episode(1, terminated=True)  # G = [1.45, 0.5]
    before = norm.max_abs_return()[1]
    for r in [50.0, -80.0, 3.0]:
        norm.record(0, r)
    norm.end_episode(0, terminated=False)
    assert norm.max_abs_return()[1] == before == pytest.approx(1.45)
    assert norm.episode_rewards[1] == []


def test_reward_scale_formula():
    g_bar = torch.tensor([3.5, 120.0])
    target_entropy = torch.tensor([-3.0, -0.5])
    alpha, gamma = 0.2, 0.99
    scale = reward_scale(g_bar, alpha, target_entropy, gamma)
    # (3.5 + 0.2 * 3 / 0.02) / 10 = 3.35 ; (120 + 0.2 * 0.5 / 0.02) / 10 = 12.5
    torch.testing.assert_close(scale, torch.tensor([3.35, 12.5]))
    scale_t = reward_scale(g_bar, torch.tensor(alpha), target_entropy, gamma)  # alpha as a tensor, as in training
    torch.testing.assert_close(scale_t, torch.tensor([3.35, 12.5]))


def test_reward_scale_once_per_step_with_the_temperature_before_its_updates(monkeypatch):
    """As the released loop: every update of one environment step divides by the same scale, computed from that
    step's G_bar and the temperature before the step's first update (the second update's own temperature would give
    another scale)."""
    events, real_update, real_g_bar = [], bro_mt.update, RewardNormalizer.max_abs_return

    def spy_update(batch, nets, masks, entropy, scales, *rest):
        events.append(("update", scales.clone(), nets.log_alpha.detach().clone()))
        return real_update(batch, nets, masks, entropy, scales, *rest)

    def spy_g_bar(normalizer):
        events.append(("g_bar", real_g_bar(normalizer)))
        return events[-1][1]

    monkeypatch.setattr(bro_mt, "update", spy_update)
    monkeypatch.setattr(RewardNormalizer, "max_abs_return", spy_g_bar)
    bro_mt.main(bro_mt.Args(env_ids=["DMC_TINY"], critic_width=16, batch_size=16, learning_starts=20,
                            total_timesteps=24, max_episode_steps=8, eval_interval=10**6, save_minutes=0))  # fmt: skip
    assert [e[0] for e in events] == ["g_bar", "update", "update"] * 5  # steps 20..24
    target_entropy = torch.tensor([-0.5, -1.0])  # cartpole-balance: 1 action dim, point_mass-easy: 2
    for (_, g_bar), (_, first, alpha_first), (_, second, alpha_second) in zip(*[iter(events)] * 3):
        hand = (torch.tensor(g_bar, dtype=torch.float32) + alpha_first.exp() * 0.5 * target_entropy.abs() / 0.01) / 10
        torch.testing.assert_close(first, hand, rtol=1e-6, atol=0)
        assert torch.equal(first, second) and alpha_first != alpha_second
        assert not torch.equal(reward_scale(torch.tensor(g_bar, dtype=torch.float32), alpha_second.exp(),
                                            target_entropy, 0.99), first)  # fmt: skip


def test_normalizer_state_dict_round_trip():
    norm = RewardNormalizer(3, gamma=0.9)
    for r in [1.0, -2.5, 0.25]:
        norm.record(0, r)
    norm.end_episode(0, terminated=False)
    norm.record(0, 4.0)
    norm.record(2, -1.0)
    state = norm.state_dict()
    other = RewardNormalizer(3, gamma=0.9)
    other.load_state_dict(state)
    np.testing.assert_array_equal(other.max_return, norm.max_return)
    np.testing.assert_array_equal(other.min_return, norm.min_return)
    assert other.episode_rewards == norm.episode_rewards
    np.testing.assert_array_equal(other.max_abs_return(), norm.max_abs_return())
    # they keep evolving identically
    for n in (norm, other):
        n.record(2, 3.0)
        n.end_episode(2, terminated=True)
    np.testing.assert_array_equal(other.max_abs_return(), norm.max_abs_return())
    # the saved state is a copy, not a view
    norm.record(0, 1e6)
    norm.end_episode(0, terminated=True)
    assert state["max_return"][0].item() != norm.max_return[0]


# ---------------------------------------------------------------------------------------------------------------
# 5. Replay buffer
# ---------------------------------------------------------------------------------------------------------------
def code(task, step):
    return 1000.0 * task + step + 1  # never zero: an unfilled slot reads 0


def fill(rb, steps, start=0, obs_dim=3, action_dim=2):
    for t in range(start, start + steps):
        c = np.array([code(i, t) for i in range(rb.num_tasks)])
        rb.add(
            obs=np.repeat(c[:, None], obs_dim, 1) + np.arange(obs_dim) * 0.25,
            actions=np.repeat(-c[:, None], action_dim, 1),
            rewards=c + 0.5,
            next_obs=np.repeat(c[:, None], obs_dim, 1) + 0.125,
            terminations=(c % 2 == 0).astype(np.float32),
        )


def test_replay_ring_wrap_around():
    rb = ReplayBuffer(num_tasks=2, capacity=5, obs_dim=3, action_dim=2, device="cpu")
    fill(rb, 7)
    assert rb.pos == 2 and rb.size == 5
    expected_steps = [5, 6, 2, 3, 4]  # slots 0 and 1 were overwritten by steps 5 and 6
    for task in range(2):
        for slot, t in enumerate(expected_steps):
            c = code(task, t)
            torch.testing.assert_close(rb.obs[task, slot], torch.tensor([c, c + 0.25, c + 0.5]))
            torch.testing.assert_close(rb.actions[task, slot], torch.tensor([-c, -c]))
            assert rb.rewards[task, slot].item() == c + 0.5
            torch.testing.assert_close(rb.next_obs[task, slot], torch.full((3,), c + 0.125))
            assert rb.terminations[task, slot].item() == float(c % 2 == 0)
    rb2 = ReplayBuffer(num_tasks=1, capacity=5, obs_dim=3, action_dim=2, device="cpu")
    fill(rb2, 3)
    assert rb2.pos == 3 and rb2.size == 3


def test_replay_sampling_uniform_and_within_size():
    torch.manual_seed(0)
    rb = ReplayBuffer(num_tasks=3, capacity=10, obs_dim=3, action_dim=2, device="cpu")
    fill(rb, 4)  # only 4 of the 10 slots are filled
    n = 30_000
    batch = rb.sample(n, "cpu")
    assert batch.obs.shape == (n, 3) and batch.actions.shape == (n, 2) and batch.rewards.shape == (n,)
    assert batch.task_ids.dtype == torch.int64
    # task counts: Binomial(n, 1/3), std = sqrt(n * 1/3 * 2/3) ~ 82; allow 5 std
    counts = torch.bincount(batch.task_ids, minlength=3).double()
    std = math.sqrt(n * (1 / 3) * (2 / 3))
    assert (counts - n / 3).abs().max() < 5 * std, counts
    # decode the stored step: never an unfilled slot (value 0), uniform over the 4 filled ones
    step = (batch.obs[:, 0] - 1000 * batch.task_ids).round().long() - 1
    assert (batch.obs[:, 0] != 0).all()
    assert step.min() >= 0 and step.max() <= 3
    counts = torch.bincount(step, minlength=4).double()
    std = math.sqrt(n * 0.25 * 0.75)
    assert (counts - n / 4).abs().max() < 5 * std, counts
    # joint (task, index) cells: 12 cells, each 1/12
    cells = torch.bincount(batch.task_ids * 4 + step, minlength=12).double()
    std = math.sqrt(n * (1 / 12) * (11 / 12))
    assert (cells - n / 12).abs().max() < 5 * std, cells


def test_replay_sampled_rows_are_consistent():
    torch.manual_seed(1)
    rb = ReplayBuffer(num_tasks=3, capacity=6, obs_dim=3, action_dim=2, device="cpu")
    fill(rb, 9)  # wrapped
    b = rb.sample(500, "cpu")
    c = b.obs[:, 0]
    # the code names the task it came from and a step still in the buffer (the last 6: steps 3..8)
    task = torch.div(c, 1000, rounding_mode="floor").long()
    assert torch.equal(task, b.task_ids)
    step = (c - 1000 * task).round().long() - 1
    assert step.min() >= 3 and step.max() <= 8
    torch.testing.assert_close(b.obs, c[:, None] + torch.tensor([0.0, 0.25, 0.5]))
    torch.testing.assert_close(b.actions, -c[:, None].expand(-1, 2))
    torch.testing.assert_close(b.rewards, c + 0.5)
    torch.testing.assert_close(b.next_obs, c[:, None].expand(-1, 3) + 0.125)
    torch.testing.assert_close(b.terminations, (c.round() % 2 == 0).float())


@pytest.mark.parametrize("steps, capacity", [(3, 8), (5, 8), (8, 12), (8, 3), (8, 6)])
def test_replay_loads_into_a_ring_of_another_capacity_oldest_first(steps, capacity):
    """A run continued with a longer --total-timesteps gets a larger ring (replay_capacity): the saved transitions
    come back oldest first, the newest that fit, and the next one is written after them (never over them)."""
    rb = ReplayBuffer(num_tasks=2, capacity=5, obs_dim=3, action_dim=2, device="cpu")
    fill(rb, steps)  # 3: partly full; 5: exactly full; 8: wrapped, the oldest at index 3
    other = ReplayBuffer(num_tasks=2, capacity=capacity, obs_dim=3, action_dim=2, device="cpu")
    other.load_state_dict(rb.state_dict())
    kept = list(range(steps))[-min(steps, 5, capacity) :]  # the steps the small ring still held, newest that fit
    assert other.size == len(kept) and other.pos == len(kept) % capacity
    assert other.rewards[1, : len(kept)].tolist() == [code(1, t) + 0.5 for t in kept]
    fill(other, 1, start=steps)
    assert other.rewards[1, len(kept) % capacity].item() == code(1, steps) + 0.5


def test_the_replay_ring_holds_no_more_than_the_run_can_store():
    args = bro_mt.Args(total_timesteps=20_000)  # buffer_size 1M by default
    assert bro_mt.replay_capacity(args) == 20_000
    assert bro_mt.replay_capacity(bro_mt.Args(total_timesteps=3_000_000)) == 1_000_000


@pytest.mark.parametrize("steps", [3, 8])
def test_replay_state_dict_round_trip(steps):
    rb = ReplayBuffer(num_tasks=2, capacity=5, obs_dim=3, action_dim=2, device="cpu")
    fill(rb, steps)
    other = ReplayBuffer(num_tasks=2, capacity=5, obs_dim=3, action_dim=2, device="cpu")
    other.load_state_dict(rb.state_dict())
    assert (other.pos, other.size) == (rb.pos, rb.size)
    for a, b in zip(rb._fields(), other._fields()):
        assert torch.equal(a, b)
    torch.manual_seed(3)
    b1 = rb.sample(64, "cpu")
    torch.manual_seed(3)
    b2 = other.sample(64, "cpu")
    for x, y in zip(b1, b2):
        assert torch.equal(x, y)
    # both continue identically (the ring position was restored)
    fill(rb, 2, start=steps)
    fill(other, 2, start=steps)
    for a, b in zip(rb._fields(), other._fields()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# 6. Losses
# ---------------------------------------------------------------------------------------------------------------
def tiny_setup(seed=0, num_tasks=3, obs_dim=5, action_dim=3, batch=8):
    torch.manual_seed(seed)
    critic = Critic(obs_dim, action_dim, num_tasks, width=16)
    randomise_norms(critic, seed)
    target = Critic(obs_dim, action_dim, num_tasks, width=16)
    randomise_norms(target, seed + 1)  # a target that differs from the online critic
    target.requires_grad_(False)
    actor = Actor(obs_dim, action_dim, critic.embedding_dim, width=16)
    log_alpha = torch.tensor(math.log(0.3), requires_grad=True)
    task_ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])[:batch]
    sizes = torch.tensor([3, 2, 1])
    mask = (torch.arange(action_dim)[None] < sizes[task_ids][:, None]).float()
    b = Batch(
        obs=torch.randn(batch, obs_dim),
        actions=(torch.rand(batch, action_dim) * 2 - 1) * mask,
        rewards=torch.randn(batch) * 5,
        next_obs=torch.randn(batch, obs_dim),
        terminations=torch.tensor([0, 0, 1, 0, 0, 0, 1, 0], dtype=torch.float32)[:batch],
        task_ids=task_ids,
    )
    scale = torch.tensor([0.7, 2.0, 1.3])[task_ids]
    support = torch.linspace(-10, 10, 101)
    return critic, target, actor, log_alpha, b, mask, scale, support


def test_critic_loss_matches_hand_computation():
    critic, target, actor, log_alpha, b, mask, scale, support = tiny_setup()
    gamma = 0.9
    torch.manual_seed(11)
    loss, q_mean = critic_loss(critic, target, actor, log_alpha, b, mask, scale, support, gamma)

    torch.manual_seed(11)  # the same next-action sample
    with torch.no_grad():
        emb = critic.embed(b.task_ids)
        next_a, next_logp = actor.sample(b.next_obs, emb, mask)
        t_logits = reference_critic_logits(target, b.next_obs, next_a, b.task_ids)
        t_probs = sum(torch.softmax(t_logits[m], -1) for m in range(2)) / 2
        alpha = math.exp(log_alpha.item())
        atoms = torch.empty(8, 101)
        for i in range(8):
            m_i = 0.0 if b.terminations[i] else 1.0
            r_i = b.rewards[i].item() / scale[i].item()
            atoms[i] = r_i + gamma * m_i * (support - alpha * next_logp[i].item())
        target_dist = categorical_projection(atoms, t_probs, support)
        logits = reference_critic_logits(critic, b.obs, b.actions, b.task_ids)
        expected = 0.0
        for m in range(2):
            ce = [-(target_dist[i] * torch.log_softmax(logits[m, i], -1)).sum().item() for i in range(8)]
            expected += sum(ce) / 8
        p_bar = (torch.softmax(logits[0], -1) + torch.softmax(logits[1], -1)) / 2
        expected_q = (p_bar * support).sum(-1).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-5)
    assert q_mean.item() == pytest.approx(expected_q.item(), rel=1e-5, abs=1e-5)
    # terminal samples do not depend on the next-state distribution: their target is the reward's 2-atom split
    for i in (2, 6):
        assert (target_dist[i] > 0).sum() <= 2


def test_critic_loss_gradients_reach_only_the_critic():
    critic, target, actor, log_alpha, b, mask, scale, support = tiny_setup()
    loss, _ = critic_loss(critic, target, actor, log_alpha, b, mask, scale, support, 0.99)
    loss.backward()
    for name, p in critic.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # every task in the batch gets an embedding gradient
    assert (critic.task_embedding.weight.grad.abs().sum(-1) > 0).all()
    for p in actor.parameters():
        assert p.grad is None
    assert log_alpha.grad is None
    for p in target.parameters():
        assert p.grad is None


def test_actor_loss_value_and_detached_embedding(monkeypatch):
    critic, _, actor, log_alpha, b, mask, _, support = tiny_setup()
    seen = []
    original = actor.sample

    def spy(obs, task_embedding, action_mask):
        seen.append(task_embedding)
        return original(obs, task_embedding, action_mask)

    monkeypatch.setattr(actor, "sample", spy)
    torch.manual_seed(4)  # the critic's weights require gradients, as in update(): the detach alone cuts the path
    loss, log_probs = actor_loss(actor, critic, log_alpha, b.obs, b.task_ids, mask, support)
    assert len(seen) == 1 and not seen[0].requires_grad  # the actor reads a detached embedding
    torch.testing.assert_close(seen[0], critic.embed(b.task_ids))

    torch.manual_seed(4)
    with torch.no_grad():
        a, logp = original(b.obs, critic.embed(b.task_ids), mask)
        logits = reference_critic_logits(critic, b.obs, a, b.task_ids)
        p_bar = (logits[0].softmax(-1) + logits[1].softmax(-1)) / 2
        q = (p_bar * support).sum(-1)
        expected = (0.3 * logp - q).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-5)
    torch.testing.assert_close(log_probs, logp)
    assert not log_probs.requires_grad

    loss.backward(inputs=list(actor.parameters()))  # as in update(): gradients for the actor's weights only
    for name, p in actor.named_parameters():
        assert p.grad is not None, name
    assert actor.mean.weight.grad.abs().sum() > 0 and actor.trunk.linear.weight.grad.abs().sum() > 0
    assert log_alpha.grad is None  # alpha is a constant in the actor loss
    for p in critic.parameters():
        assert p.grad is None


def test_actor_embedding_gradient_only_through_critic_input():
    """With the critic trainable, the embedding's gradient from the actor loss equals the one obtained when the
    actor is fed a constant copy of the embedding: the actor's own input contributes nothing."""
    critic, _, actor, log_alpha, b, mask, _, support = tiny_setup()
    torch.manual_seed(9)
    loss, _ = actor_loss(actor, critic, log_alpha, b.obs, b.task_ids, mask, support)
    loss.backward()
    grad = critic.task_embedding.weight.grad.clone()
    critic.zero_grad(set_to_none=True)

    torch.manual_seed(9)
    const_emb = critic.embed(b.task_ids).detach().clone()
    a, logp = actor.sample(b.obs, const_emb, mask)
    q = (critic(b.obs, a, b.task_ids).softmax(-1).mean(0) * support).sum(-1)
    (0.3 * logp - q).mean().backward()
    torch.testing.assert_close(grad, critic.task_embedding.weight.grad, atol=1e-7, rtol=1e-5)


def test_temperature_loss_value_and_gradient_sign():
    log_alpha = torch.tensor(math.log(0.1), requires_grad=True)
    log_probs = torch.tensor([-1.0, -2.0])  # entropy estimate 1.5
    target = torch.tensor([-3.0, -3.0])  # entropy above target -> lower alpha: d loss / d log_alpha > 0
    loss = temperature_loss(log_alpha, log_probs, target)
    assert loss.item() == pytest.approx(0.1 * 4.5)
    loss.backward()
    assert log_alpha.grad.item() == pytest.approx(0.1 * 4.5) and log_alpha.grad.item() > 0
    log_alpha.grad = None
    temperature_loss(log_alpha, torch.tensor([2.0, 4.0]), torch.tensor([-1.0, -0.5])).backward()
    # entropy -3 below the targets: 0.1 * mean(-2 + 1, -4 + 0.5) = 0.1 * -2.25
    assert log_alpha.grad.item() == pytest.approx(-0.225) and log_alpha.grad.item() < 0


# ---------------------------------------------------------------------------------------------------------------
# 7. Task ids
# ---------------------------------------------------------------------------------------------------------------
def test_resolve_env_ids_expands_suites():
    assert resolve_env_ids(["DMC_TINY"]) == ["cartpole-balance", "point_mass-easy"]
    assert resolve_env_ids(["DMC_DOGS", "cartpole-swingup"]) == [
        "dog-stand",
        "dog-walk",
        "dog-trot",
        "dog-run",
        "cartpole-swingup",
    ]
    assert resolve_env_ids(["walker-run"]) == ["walker-run"]
    assert len(resolve_env_ids(["DMC_HARD"])) == 7


@pytest.mark.parametrize("ids", [["dog-fly"], ["DMC_NOPE"], ["cartpole_balance"], []])
def test_resolve_env_ids_unknown(ids):
    with pytest.raises(SystemExit) as err:
        resolve_env_ids(ids)
    msg = str(err.value)
    assert "DMC_HARD" in msg and "DMC_TINY" in msg  # the suites
    assert "cartpole" in msg and "humanoid" in msg  # the domains
    for bad in ids:
        assert bad in msg


@pytest.mark.parametrize(
    "ids", [["cartpole-balance", "cartpole-balance"], ["DMC_TINY", "point_mass-easy"], ["DMC_DOGS", "DMC_HARD"]]
)
def test_resolve_env_ids_refuses_duplicates(ids):
    with pytest.raises(SystemExit, match="twice"):
        resolve_env_ids(ids)


# ---------------------------------------------------------------------------------------------------------------
# 8. dm_control wrapper
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id,obs_dim,action_dim", [("cartpole-balance", 5, 1), ("point_mass-easy", 4, 2)])
def test_dmc_env_spaces(env_id, obs_dim, action_dim):
    env = brc_envs.DMCEnv(env_id, seed=0)
    obs, _ = env.reset()
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,) == env.observation_space.shape
    assert env.action_space.shape == (action_dim,)
    np.testing.assert_array_equal(env.action_space.low, -1)
    np.testing.assert_array_equal(env.action_space.high, 1)
    obs, r, terminated, truncated, _ = env.step(np.zeros(action_dim, np.float32))
    assert obs.dtype == np.float32 and obs.shape == (obs_dim,) and isinstance(r, float)
    assert not terminated and not truncated


def test_dmc_env_truncation_flag():
    env = brc_envs.DMCEnv("point_mass-easy", seed=0, max_episode_steps=4)
    env.reset()
    flags = [env.step(np.zeros(2))[2:4] for _ in range(4)]
    assert flags == [(False, False)] * 3 + [(False, True)]


# reacher places its target in the model (geom_pos) when an episode starts: the state must carry it.
@pytest.mark.parametrize("env_id", ["cartpole-balance", "point_mass-easy", "reacher-easy"])
def test_dmc_env_state_round_trip(env_id):
    rng = np.random.default_rng(0)
    env = brc_envs.DMCEnv(env_id, seed=1, max_episode_steps=20)
    n_act = env.action_space.shape[0]
    env.reset()
    for _ in range(7):
        env.step(rng.uniform(-1, 1, n_act))
    state = env.get_state()
    actions = rng.uniform(-1, 1, (50, n_act))

    def rollout(e):
        out = []
        for a in actions:  # crosses two episode ends, so the task RNG's restore is exercised by reset()
            o, r, term, trunc, _ = e.step(a)
            out.append((o.copy(), r, term, trunc))
            if term or trunc:
                out.append((e.reset()[0].copy(), None, None, None))
        return out

    first = rollout(env)
    other = brc_envs.DMCEnv(env_id, seed=123, max_episode_steps=20)  # a different seed: all must come from the state
    other.reset()
    other.set_state(state)
    second = rollout(other)
    env.set_state(state)  # and back on the original env
    third = rollout(env)
    assert sum(1 for x in first if x[1] is None) == 2
    for run in (second, third):
        assert len(run) == len(first)
        for (o1, r1, t1, u1), (o2, r2, t2, u2) in zip(first, run):
            np.testing.assert_array_equal(o1, o2)
            assert (r1, t1, u1) == (r2, t2, u2)


def test_a_simulator_state_from_before_metaworld_is_refused_clearly():
    env = brc_envs.DMCEnv("cartpole-balance", 0)
    env.reset()
    old = env.get_state() | {"physics": torch.zeros(13)}  # the earlier format: one tensor
    with pytest.raises(SystemExit, match="earlier version of this code .* start a new run"):
        env.set_state(old)
