"""Nothing lost, nothing silently wrong: what a resume may change, what it keeps, damaged checkpoints, simulators
that fail or return NaN, and Ctrl-C during an evaluation. Tiny networks, a few hundred steps. (Flag ranges are in
test_flags.py; full disks, racing run folders, signals and checksums of the plumbing itself in test_run_utils.py.)"""

import glob
import math
import os

import numpy as np
import pytest
import torch

import bro_atari
from brc_utils import atari as brc_atari
from brc_utils import envs as brc_envs
import bro_mt
from test_atari import PixelGame

MT = dict(env_ids=["DMC_TINY"], critic_width=32, batch_size=32, learning_starts=50, eval_interval=10_000,
          eval_episodes=1, log_interval=50, max_episode_steps=60)  # fmt: skip
ATARI = dict(env_ids=["A", "B"], critic_width=32, encoder_width=2, batch_size=16, learning_starts=10, eval_interval=10_000,
             eval_episodes=1, log_interval=50, epsilon_decay_steps=20, cuda=False)  # fmt: skip


def run_mt(**flags) -> str:
    return bro_mt.main(bro_mt.Args(**{**MT, **flags}))


def run_atari(**flags) -> str:
    return bro_atari.main(bro_atari.Args(**{**ATARI, **flags}), make_env=PixelGame)


# ---- What a resume may change ----
@pytest.mark.parametrize("buffer_size", [200, 50])
def test_a_wrapped_replay_ring_is_not_resumed_into_another_capacity(buffer_size):
    """A ring of 100 that wrapped (150 steps) cannot go into a larger buffer (rows never written would be sampled)
    or a smaller one (it does not fit): the resume is refused, naming the flag, before anything is built."""
    path = run_mt(buffer_size=100, total_timesteps=150, save_buffer=True)
    assert torch.load(path, weights_only=True)["replay_buffer"]["size"] == 100
    with pytest.raises(
        SystemExit, match=f"--buffer-size {buffer_size} \\(the checkpoint's run used --buffer-size 100\\)"
    ):
        run_mt(buffer_size=buffer_size, total_timesteps=200, save_buffer=True, resume=path)
    resumed = torch.load(run_mt(total_timesteps=200, save_buffer=True, resume=path), weights_only=True)
    assert resumed["global_step"] == 200 and resumed["replay_buffer"]["size"] == 100  # with its own size it goes on


@pytest.mark.parametrize(
    "flags, named",
    [(dict(gamma=0.9), "--gamma 0.9"), (dict(reward_norm=False), "--no-reward-norm"),
     (dict(max_episode_steps=30), "--max-episode-steps 30"), (dict(embedding_dim=16), "--embedding-dim 16")],
)  # fmt: skip
def test_mt_resume_refuses_flags_that_change_what_the_state_means(flags, named, mt_checkpoint):
    with pytest.raises(SystemExit, match=f"{named} \\(the checkpoint's run used"):
        bro_mt.main(bro_mt.Args(resume=mt_checkpoint, **flags))


@pytest.mark.parametrize(
    "flags, named",
    [(dict(clip_rewards=True), "--clip-rewards"), (dict(n_step=5), "--n-step 5"), (dict(num_bins=51), "--num-bins 51"),
     (dict(embedding_dim=16), "--embedding-dim 16")],
)  # fmt: skip
def test_atari_resume_refuses_flags_that_change_what_the_state_means(flags, named, atari_checkpoint):
    with pytest.raises(SystemExit, match=f"{named} \\(the checkpoint's run used"):
        bro_atari.main(bro_atari.Args(resume=atari_checkpoint, **flags), make_env=PixelGame)


@pytest.fixture
def mt_checkpoint() -> str:
    return run_mt(total_timesteps=60)


@pytest.fixture
def atari_checkpoint() -> str:
    return run_atari(total_timesteps=30)


# ---- What a resume keeps ----
def test_a_resumed_run_never_overwrites_a_checkpoint_it_did_not_write():
    path = run_mt(total_timesteps=60, save_every=20)  # saves 20, 40, 60; keeps only its latest
    folder = os.path.dirname(path)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".pt")) == ["checkpoint.pt", "checkpoint_step60.pt"]
    started_from = torch.load(path, weights_only=True)
    assert os.path.samefile(path, os.path.join(folder, "checkpoint_step60.pt"))  # checkpoint.pt: the latest

    resumed = bro_mt.main(bro_mt.Args(resume=folder, total_timesteps=80))  # a run folder: its latest checkpoint
    assert resumed == path and torch.load(resumed, weights_only=True)["global_step"] == 80
    kept = torch.load(os.path.join(folder, "checkpoint_step60.pt"), weights_only=True)
    for name, value in started_from["critic"].items():
        assert torch.equal(kept["critic"][name], value), name

    bro_mt.main(bro_mt.Args(resume=os.path.join(folder, "checkpoint_step60.pt"), total_timesteps=70))  # an older one
    steps = sorted(f for f in os.listdir(folder) if f.startswith("checkpoint_step"))
    assert steps == ["checkpoint_step60.pt", "checkpoint_step70.pt", "checkpoint_step80.pt"]  # nothing lost
    assert torch.load(path, weights_only=True)["global_step"] == 70  # checkpoint.pt: the latest save


# ---- Damaged checkpoints ----
def test_a_checkpoint_with_flipped_bytes_is_refused():
    path = run_mt(total_timesteps=60, critic_width=256)  # the file is mostly weights and optimiser moments
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0x55 for b in data[middle : middle + 64])
    open(path, "wb").write(bytes(data))
    with pytest.raises(SystemExit, match="does not match its checksum|truncated or corrupt"):
        run_mt(total_timesteps=80, critic_width=256, resume=path)


# ---- Simulators that fail or return NaN ----
def test_a_nan_observation_stops_the_run_naming_the_task_and_saves(monkeypatch):
    real_step, calls = brc_envs.DMCEnv.step, []

    def step(self, action):
        obs, reward, terminated, truncated, info = real_step(self, action)
        calls.append(1)
        if self.env_id == "point_mass-easy" and len(calls) > 2 * 70:  # both tasks step each time: step 71
            obs = obs * np.nan
        return obs, reward, terminated, truncated, info

    monkeypatch.setattr(brc_envs.DMCEnv, "step", step)
    with pytest.raises(SystemExit, match="non-finite observation or reward from point_mass-easy at step 70") as stop:
        run_mt(total_timesteps=200)
    saved = glob.glob("runs/*/nan_env_step70.pt")
    assert saved and saved[0] in str(stop.value)
    assert torch.load(saved[0], weights_only=True)["global_step"] == 70


def test_a_simulator_error_stops_the_run_with_a_message(monkeypatch):
    def step(self, action):
        raise RuntimeError(
            "Physics state is invalid. Warning(s) raised: mjWARN_BADQACC"
        )  # as dm_control's PhysicsError

    monkeypatch.setattr(brc_atari.GameEnv, "step", step)
    with pytest.raises(SystemExit, match="an environment failed at step 0 \\(RuntimeError: Physics state is invalid"):
        run_atari(total_timesteps=30)
    assert glob.glob("runs/*/env_error_step0.pt")


# ---- Ctrl-C during an evaluation ----
def test_ctrl_c_ends_an_mt_evaluation_after_the_current_episode():
    envs = [brc_envs.DMCEnv("cartpole-balance", 0, max_episode_steps=20), brc_envs.DMCEnv("point_mass-easy", 1, 20)]
    critic, actor = bro_mt.Critic(5, 2, 2, 16), bro_mt.Actor(5, 2, 32)
    masks, ids = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.arange(2)
    full, _ = bro_mt.evaluate(actor, critic, envs, ids, 5, 3, masks, "cpu", seed=0)
    asked = []
    cut, _ = bro_mt.evaluate(actor, critic, envs, ids, 5, 3, masks, "cpu", seed=0, stop=lambda: asked.append(1) or True)
    assert asked == [1]  # asked once, after the first episode, which it finished
    first_only, _ = bro_mt.evaluate(actor, critic, envs, ids, 5, 1, masks, "cpu", seed=0)
    np.testing.assert_array_equal(cut, first_only)
    assert full.shape == cut.shape == (2,)


def test_ctrl_c_ends_an_atari_evaluation_after_the_current_episode():
    games = [PixelGame("A", 0), PixelGame("B", 1)]
    net, support = bro_atari.QNetwork(2, 4, 16, encoder_width=2), torch.linspace(-10, 10, 101)
    resets = []
    for game in games:
        game.reset = (lambda reset: lambda seed=None: resets.append(1) or reset(seed))(game.reset)
    scores = bro_atari.evaluate(net, games, torch.arange(2), 5, 0.0, support, "cpu", seed=0, stop=lambda: True)
    assert len(resets) == 2 and set(scores) == {"A", "B"}  # one episode of each game, then it stopped
    assert all(math.isfinite(score) for score in scores.values())
