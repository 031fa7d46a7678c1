"""The ablation and transfer switches of bro_mt.py: --critic-loss mse, --task-conditioning, --no-reward-norm,
--init-from / --freeze-trunk. Each is checked against a hand computation or by what it must leave unchanged."""

import math

import pytest
import torch
import torch.nn.functional as F

import bro_mt

from test_mt_train import TINY as TRAIN_TINY

TINY = {**TRAIN_TINY, "eval_interval": 10_000}  # the training tests' tiny run, without its evaluations


def run(**overrides) -> dict:
    return torch.load(bro_mt.main(bro_mt.Args(**{**TINY, **overrides})), weights_only=True)


def tiny_batch(batch_size=6, obs_dim=5, action_dim=2, num_tasks=3):
    g = torch.Generator().manual_seed(0)
    return bro_mt.Batch(
        torch.randn(batch_size, obs_dim, generator=g),
        torch.rand(batch_size, action_dim, generator=g),
        torch.randn(batch_size, generator=g),
        torch.randn(batch_size, obs_dim, generator=g),
        torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
        torch.tensor([0, 1, 2, 0, 1, 2]),
    )


def test_mse_critic_regresses_on_the_soft_td_target():
    torch.manual_seed(0)
    critic, target = bro_mt.Critic(5, 2, 3, 16, num_bins=1), bro_mt.Critic(5, 2, 3, 16, num_bins=1)
    actor, log_alpha = bro_mt.Actor(5, 2, critic.embedding_dim), torch.tensor(math.log(0.2))
    batch, mask, scale, gamma = tiny_batch(), torch.ones(6, 2), torch.full((6,), 2.0), 0.9
    support = torch.linspace(-10, 10, 101)
    torch.manual_seed(1)
    loss, q_mean = bro_mt.mse_critic_loss(critic, target, actor, log_alpha, batch, mask, scale, support, gamma)
    torch.manual_seed(1)  # the same next actions
    with torch.no_grad():
        next_actions, next_log_probs = actor.sample(batch.next_obs, critic.embed(batch.task_ids), mask)
        next_q = target(batch.next_obs, next_actions, batch.task_ids)[:, :, 0].mean(0)
        y = batch.rewards / 2 + gamma * (1 - batch.terminations) * (next_q - 0.2 * next_log_probs)
        q = critic(batch.obs, batch.actions, batch.task_ids)[:, :, 0]  # [members, batch]
    expected = sum(((q[m] - y) ** 2).mean() for m in range(2))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(q_mean, q.mean(0).mean())


def test_multihead_critic_uses_each_samples_own_head():
    torch.manual_seed(0)
    critic = bro_mt.MultiHeadCritic(5, 2, 3, 16, num_bins=7)
    assert critic.task_embedding is None and critic.head.weight.shape == (2, 16, 3 * 7)
    batch = tiny_batch()
    out = critic(batch.obs, batch.actions, batch.task_ids)
    features = critic.trunk(torch.cat([batch.obs, batch.actions], -1).expand(2, 6, 7))
    for i, task in enumerate(batch.task_ids.tolist()):
        w, b = critic.head.weight[:, :, 7 * task : 7 * task + 7], critic.head.bias[:, :, 7 * task : 7 * task + 7]
        torch.testing.assert_close(out[:, i], torch.einsum("mf,mfo->mo", features[:, i], w) + b[:, 0])
    # The actor reads a one-hot task id.
    torch.testing.assert_close(critic.embed(batch.task_ids), F.one_hot(batch.task_ids, 3).float())


def test_unconditioned_critic_ignores_the_task():
    critic = bro_mt.Critic(5, 2, 3, 16, conditioning="none")
    batch = tiny_batch()
    assert critic.embedding_dim == 0 and critic.task_embedding is None
    torch.testing.assert_close(
        critic(batch.obs, batch.actions, batch.task_ids),
        critic(batch.obs, batch.actions, torch.zeros_like(batch.task_ids)),
    )


@pytest.mark.parametrize(
    "overrides",
    [
        dict(critic_loss="mse"),
        dict(task_conditioning="multihead"),
        dict(task_conditioning="none"),
        dict(reward_norm=False),
    ],
)
def test_ablation_runs_train(overrides):
    ckpt = run(total_timesteps=120, **overrides)
    assert ckpt["critic_optimizer"]["state"][0]["step"].item() == 2 * (120 - 50 + 1)  # steps 50..120
    assert all(torch.isfinite(v).all() for v in ckpt["critic"].values())
    assert ckpt["config"]["critic_loss"] == overrides.get("critic_loss", "categorical")


def test_no_reward_norm_trains_on_raw_rewards(monkeypatch):
    seen = []
    real = bro_mt.critic_loss
    monkeypatch.setattr(bro_mt, "critic_loss", lambda *a: seen.append(a[6]) or real(*a))
    run(total_timesteps=55, reward_norm=False)
    assert seen and all(scale == 1.0 for scale in seen)


def test_transfer_copies_the_trunk_and_freezes_it():
    pretrained = run(total_timesteps=100)
    path = "pretrained.pt"
    torch.save(pretrained, path)
    new = run(env_ids=["cartpole-swingup"], total_timesteps=80, init_from=path, freeze_trunk=True)
    for name, value in pretrained["critic"].items():
        if name.startswith("trunk."):  # frozen: bit-identical after 60 updates
            assert torch.equal(new["critic"][name], value), name
    assert not torch.equal(new["critic"]["head.weight"], pretrained["critic"]["head.weight"])
    assert new["critic"]["task_embedding.weight"].shape == (1, 32)
    assert new["config"]["obs_dim"] == 5 and new["config"]["action_dim"] == 2  # padded to the pretrained sizes


def test_transfer_initialises_new_embeddings_near_the_pretrained_mean():
    pretrained = run(total_timesteps=60)
    torch.save(pretrained, "pretrained.pt")
    critic = bro_mt.Critic(5, 2, 2, 32)
    bro_mt.transfer(pretrained, critic, bro_mt.Actor(5, 2, 32))
    mean = F.normalize(pretrained["critic"]["task_embedding.weight"], dim=-1).mean(0)
    new = critic.task_embedding.weight.detach()
    assert all(F.cosine_similarity(row, mean, dim=0) > 0.9 for row in new) and not torch.equal(new[0], new[1])
    # the mean of unit vectors plus 10% noise: a norm of at most ~1, the size of a fresh row (make_task_embedding)
    torch.testing.assert_close(new.norm(dim=-1), mean.norm().expand(2), rtol=0.15, atol=0)
    assert mean.norm() <= 1
    torch.testing.assert_close(critic.state_dict()["trunk.linear.weight"], pretrained["critic"]["trunk.linear.weight"])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(env_ids=["reacher-easy"]), "observations of up to 5 and actions of up to 2 .* these tasks need 6 and 2"),
        (dict(env_ids=["cartpole-swingup"], critic_width=64), "checkpoint's critic_width is 32 but this run's is 64"),
        (dict(env_ids=["cartpole-swingup"], critic_loss="mse"), "critic_loss is categorical but this run's is mse"),
    ],
)
def test_transfer_mismatch_is_refused(overrides, message):
    torch.save(run(total_timesteps=20), "pretrained.pt")
    with pytest.raises(SystemExit, match=message):
        run(total_timesteps=10, init_from="pretrained.pt", **overrides)


def test_freeze_trunk_needs_init_from():
    with pytest.raises(SystemExit, match="use it with --init-from"):
        run(total_timesteps=10, freeze_trunk=True)
