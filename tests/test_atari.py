"""Tests of bro_atari.py: replay frame storage, n-step returns, the categorical double-DQN target, reward
normalisation, exploration, scores, a smoke run on real games with exact resume, and learning from pixels."""

import csv
import glob
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from brc_utils import atari as brc_atari
from brc_utils import run as run_utils
from bro_atari import (
    Args,
    RewardNormalizer,
    ReplayBuffer,
    categorical_projection,
    double_dqn_target,
    epsilon_schedule,
    human_normalized,
    interquartile_mean,
    main,
    reward_scale,
)

SHARED = [os.path.join(os.path.dirname(__file__), "..", "..", "shared"), "/work/shared"]


# ---- A tiny pixel game with AtariGame's interface ----
class PixelGame:
    """A bright quadrant in the 84x84 frame names the rewarded action (game "B": the next action, mod 4).

    Reward 1 for the right action, 0 otherwise; a life is lost every 5 steps and the game ends after 10 steps.
    With `truncate_at`, episodes are cut (truncated) after that many steps instead.
    """

    num_actions = 4

    def __init__(self, game: str, seed: int, truncate_at: int = 0, noise: bool = False):
        self.game, self.rng, self.truncate_at, self.noise = game, np.random.default_rng(seed), truncate_at, noise
        self.shift = 1 if game == "B" else 0
        self.t = self.target = 0

    def _frame(self):
        frame = self.rng.integers(0, 60, (84, 84), dtype=np.uint8) if self.noise else np.zeros((84, 84), np.uint8)
        row, col = divmod(self.target, 2)
        frame[row * 42 : (row + 1) * 42, col * 42 : (col + 1) * 42] = 200
        return frame

    def reset(self, seed=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t, self.target = 0, int(self.rng.integers(4))
        return self._frame()

    def step(self, action):
        reward = float(action == (self.target + self.shift) % 4)
        self.t += 1
        self.target = int(self.rng.integers(4))
        truncated = bool(self.truncate_at) and self.t >= self.truncate_at
        terminated = not truncated and self.t >= 10
        return self._frame(), reward, terminated, truncated, self.t % 5 == 0

    def render(self):
        return np.repeat(self._frame()[..., None], 3, -1)

    def get_state(self):
        return {"rng": self.rng.bit_generator.state, "t": self.t, "target": self.target}

    def set_state(self, state):
        self.rng.bit_generator.state, self.t, self.target = state["rng"], state["t"], state["target"]


def collect(env, rb: ReplayBuffer, steps: int, game: int, seed: int = 0):
    """Step `env` with random actions and store entries exactly as bro_atari's training loop does. Returns, per
    step, the buffer entry written, how many entries the game had written before it, and the env's frame stack."""
    rng = np.random.default_rng(seed)
    stack = np.repeat(env.reset()[None], 4, 0)
    first, records, written = True, [], 0
    for _ in range(steps):
        frame, reward, terminated, truncated, life_lost = env.step(int(rng.integers(env.num_actions)))
        records.append((int(rb.pos[game]), written, stack.copy()))
        rb.add(stack[-1][None], [0], [reward], [terminated or life_lost], [first], games=[game])
        written += 1
        first = terminated or truncated
        if truncated:  # the final frame of a truncated episode, to bootstrap from
            rb.add(frame[None], [0], [0], [False], [False], [True], games=[game])
            written += 1
        if terminated or truncated:
            stack = np.repeat(env.reset()[None], 4, 0)
        else:
            stack[:-1], stack[-1] = stack[1:].copy(), frame
    return records, written


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loading_a_game_prints_no_banner():
    """ALE's banner ("A.L.E: Arcade Learning Environment ...") comes from C++ on stderr for every emulator: silenced."""
    code = "from brc_utils.atari import AtariGame; AtariGame('Pong', 0).reset(0)"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "A.L.E" not in done.stdout + done.stderr and "Stella" not in done.stdout + done.stderr


# ---- Replay: frame storage and n-step returns ----
@pytest.mark.parametrize("capacity", [1000, 37])
def test_stacks_rebuilt_from_single_frames_equal_the_env_stacks(capacity):
    env = PixelGame("A", 0, truncate_at=7, noise=True)  # every 7 steps a truncation writes an extra `last` entry
    rb = ReplayBuffer(2, capacity, "cpu")
    records, written = collect(env, rb, 120, game=1)
    assert int(rb.size[0]) == 0 and int(rb.size[1]) == min(capacity, written) and written == 120 + 120 // 7
    # entries still in the ring; once it wrapped, the 4 oldest may stack onto overwritten frames and are never sampled
    oldest_valid = written - int(rb.size[1]) + (4 if written > capacity else 0)
    checked = 0
    for entry, rank, stack in records:
        if rank >= oldest_valid:
            rebuilt = rb.stacks(torch.tensor([1]), torch.tensor([entry]))[0].numpy()
            np.testing.assert_array_equal(rebuilt, stack)
            checked += 1
    assert checked >= min(capacity, 120) - 8


def test_n_step_returns_and_bootstrap_against_hand_computation():
    rb = ReplayBuffer(1, 16, "cpu")
    gamma = 0.9
    # entry:      0    1    2    3    4    5(last)  6(first) 7    8    9
    rewards = [1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 6.0, 7.0, 8.0, 9.0]
    terminal = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    first = [1, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    last = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    for r, te, fi, la in zip(rewards, terminal, first, last):
        rb.add(np.zeros((1, 84, 84), np.uint8), [0], [r], [te], [fi], [la])
    scale = torch.tensor([2.0])  # every reward is halved
    index = torch.tensor([0, 1, 2, 3, 4, 6])
    returns, bootstrap, next_index = rb.n_step(torch.zeros(6, dtype=torch.long), index, 3, gamma, scale.expand(6))
    expected = [
        ((1 + 0.9 * 2 + 0.81 * 3) / 2, 0.0, 3),  # terminal at entry 2 ends the sum, no bootstrap
        ((2 + 0.9 * 3) / 2, 0.0, 3),
        (3 / 2, 0.0, 3),
        ((4 + 0.9 * 5) / 2, 0.81, 5),  # truncation: bootstrap from the final frame (entry 5) with gamma^2
        (5 / 2, 0.9, 5),
        ((6 + 0.9 * 7 + 0.81 * 8) / 2, 0.729, 9),  # a full 3-step window
    ]
    for i, (ret, boot, nxt) in enumerate(expected):
        assert returns[i].item() == pytest.approx(ret, rel=1e-6)
        assert bootstrap[i].item() == pytest.approx(boot, rel=1e-6)
        assert next_index[i].item() == nxt
    clipped, _, _ = rb.n_step(torch.zeros(1, dtype=torch.long), torch.tensor([6]), 3, gamma, scale, clip=True)
    assert clipped.item() == pytest.approx(1 + 0.9 + 0.81)


def test_sampling_never_starts_at_a_last_entry_or_too_close_to_the_cursor():
    torch.manual_seed(0)
    rb = ReplayBuffer(1, 12, "cpu")
    for t in range(30):  # wraps; entry flagged `last` every 5th write
        rb.add(np.full((1, 84, 84), t, np.uint8), [t % 4], [float(t)], [False], [t % 5 == 1], [t % 5 == 0 and t > 0])
    batch = rb.sample(2000, 3, 0.5, torch.ones(1), False, "cpu")
    newest = 29
    values = batch.obs[:, -1, 0, 0].long()  # the frame value is the write time t
    assert values.min() >= newest - 12 + 1 + 3 and values.max() <= newest - 3
    assert not ((values % 5 == 0) & (values > 0)).any()


# ---- Categorical double-DQN target ----
def test_double_dqn_target_matches_a_plain_loop():
    torch.manual_seed(0)
    batch, actions, bins = 6, 5, 11
    support = torch.linspace(-2.0, 2.0, bins)
    online, target = torch.randn(batch, actions, bins) * 2, torch.randn(batch, actions, bins)
    returns = torch.tensor([0.0, 0.4, -1.0, 3.0, -0.35, 0.1])
    bootstrap = torch.tensor([0.9, 0.0, 0.81, 0.9, 0.5, 1.0])
    got = double_dqn_target(online, target, returns, bootstrap, support)
    delta = 0.4
    for b in range(batch):
        q = [
            sum(torch.softmax(online[b, a], 0)[j].item() * support[j].item() for j in range(bins))
            for a in range(actions)
        ]
        best = max(range(actions), key=lambda a: q[a])
        probs = torch.softmax(target[b, best], 0)
        expected = [0.0] * bins
        for j in range(bins):
            tz = min(max(returns[b].item() + bootstrap[b].item() * support[j].item(), -2.0), 2.0)
            pos = (tz + 2.0) / delta
            lo, hi = math.floor(pos), math.ceil(pos)
            if lo == hi:
                expected[lo] += probs[j].item()
            else:
                expected[lo] += probs[j].item() * (hi - pos)
                expected[hi] += probs[j].item() * (pos - lo)
        np.testing.assert_allclose(got[b].numpy(), expected, atol=1e-5)
    assert torch.allclose(got.sum(-1), torch.ones(batch))


def test_projection_of_atoms_on_the_support_is_the_identity():
    support = torch.linspace(-2, 2, 9)  # spacing 0.5, exact in float32
    probs = torch.softmax(torch.randn(3, 9), -1)
    assert torch.equal(categorical_projection(support.expand(3, 9), probs, support), probs)


# ---- Reward normalisation, exploration, scores ----
def test_reward_normalizer_is_per_game_with_fallback_and_floor():
    normalizer = RewardNormalizer(2, gamma=0.5)
    for r in [1.0, 2.0]:
        normalizer.record(0, r)
    normalizer.end_episode(0, terminated=True)  # returns-to-go: 2, 1 + 0.5 * 2 = 2
    for r in [-4.0, 0.0]:
        normalizer.record(1, r)
    # game 1 has no finished episode: its episode so far counts as truncated, tail mean(r)/(1-gamma) = -4
    # returns-to-go: 0 + 0.5 * -4 = -2, -4 + 0.5 * -2 = -5 -> G_bar 5
    np.testing.assert_allclose(normalizer.max_abs_return(), [2.0, 5.0])
    assert normalizer.needs_fallback()
    normalizer.end_episode(1, terminated=True)  # now -4, 0 -> returns -4, 0 -> G_bar 4
    np.testing.assert_allclose(normalizer.max_abs_return(), [2.0, 4.0])
    assert not normalizer.needs_fallback()
    assert reward_scale(torch.tensor([0.0, 0.5, 30.0])).tolist() == pytest.approx([0.1, 0.1, 3.0])


def test_epsilon_schedule():
    assert epsilon_schedule(0, 100, 1000, 0.01) == 1.0
    assert epsilon_schedule(100, 100, 1000, 0.01) == 1.0
    assert epsilon_schedule(600, 100, 1000, 0.01) == pytest.approx(0.505)
    assert epsilon_schedule(1100, 100, 1000, 0.01) == pytest.approx(0.01)
    assert epsilon_schedule(10**6, 100, 1000, 0.01) == pytest.approx(0.01)


def test_human_normalised_scores_and_iqm():
    assert human_normalized("Pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("Breakout", 1.7) == pytest.approx(0.0)
    assert human_normalized("Boxing", 6.1) == pytest.approx(0.5)
    assert human_normalized("NotAGame", 3.0) is None
    assert interquartile_mean([5.0, 1.0, 100.0, 2.0, 3.0, -50.0, 4.0, 0.0]) == pytest.approx(2.5)  # drop 2 each end
    assert interquartile_mean([1.0, 2.0, 9.0]) == pytest.approx(4.0)  # n < 4: nothing dropped


def test_embedded_reference_scores_equal_the_shared_csv():
    path = next(
        (
            os.path.join(d, "atari_reference_scores.csv")
            for d in SHARED
            if os.path.exists(os.path.join(d, "atari_reference_scores.csv"))
        ),
        None,
    )
    if path is None:
        pytest.skip("atari_reference_scores.csv is not beside this checkout")
    with open(path) as f:
        table = {row["game"]: (float(row["random"]), float(row["human"])) for row in csv.DictReader(f)}
    assert brc_atari.REFERENCE_SCORES == table and len(table) == 57


def test_suites_and_errors():
    assert len(brc_atari.SUITES["ATARI_100K_26"]) == 26 and len(brc_atari.SUITES["ATARI_57"]) == 57
    assert brc_atari.resolve_env_ids(["ATARI_5", "Pong"])[-1] == "Pong"
    with pytest.raises(SystemExit, match="Pongg -> Pong"):
        brc_atari.resolve_env_ids(["Pongg"])
    with pytest.raises(SystemExit, match="twice"):
        brc_atari.resolve_env_ids(["Pong", "ATARI_QUICK"])
    with pytest.raises(SystemExit, match="model-size"):
        main(Args(env_ids=["Pong"], model_size="2M"))


# ---- Full pipeline ----
@pytest.fixture
def one_thread():
    """One torch thread: on a small, busy CI machine two threads per process can be many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_args(**kwargs) -> Args:
    defaults = dict(
        env_ids=["Pong", "Breakout"],
        critic_width=32,
        encoder_width=2,
        batch_size=16,
        buffer_size=500,
        learning_starts=10,
        total_timesteps=40,
        eval_interval=40,
        eval_episodes=1,
        log_interval=20,
        max_episode_frames=160,
        epsilon_decay_steps=20,
        cuda=False,
    )
    defaults.update(kwargs)
    return Args(**defaults)


def test_smoke_real_games_and_exact_resume(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.chdir(tmp_path)
    full = torch.load(main(tiny_args(exp_name="full", save_buffer=True)), weights_only=True)
    out = capsys.readouterr().out
    assert "parameters (encoder" in out and "replay buffer (2 games x 500 frames) ~" in out
    assert "eval @ 40: mean_return" in out and "hns_iqm" in out and "Pong" in out and "critic" in out
    run_dir = os.path.dirname(glob.glob("runs/*full*/checkpoint.pt")[0])
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    assert full["global_step"] == 40 and all(torch.isfinite(p).all() for p in full["q_network"].values())
    assert full["normalizer"]["max_return"].isfinite().all()  # 160-frame episodes ended in both games

    half = main(tiny_args(exp_name="half", total_timesteps=25, save_buffer=True))
    resumed = torch.load(main(tiny_args(exp_name="half", resume=half, save_buffer=True)), weights_only=True)
    assert resumed["global_step"] == 40
    for name, value in full["q_network"].items():
        torch.testing.assert_close(resumed["q_network"][name], value, rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed["replay_buffer"]["data"][0], full["replay_buffer"]["data"][0], rtol=0, atol=0)

    with pytest.raises(SystemExit, match=r"--encoder-width 4 \(the checkpoint's run used --encoder-width 2\)"):
        main(tiny_args(resume=half, encoder_width=4))
    with pytest.raises(
        SystemExit, match=r"--env-ids Breakout Pong \(the checkpoint's run used --env-ids Pong Breakout\)"
    ):
        main(tiny_args(resume=half, env_ids=["Breakout", "Pong"]))
    (tmp_path / "corrupt.pt").write_bytes(open(half, "rb").read()[:1000])
    with pytest.raises(SystemExit, match="corrupt"):
        main(tiny_args(resume=str(tmp_path / "corrupt.pt")))


@pytest.mark.parametrize("update_every, updates", [(1, 40 - 10 + 1), (4, 8)])
def test_update_every_runs_the_updates_on_every_kth_step_only(tmp_path, monkeypatch, update_every, updates, one_thread):
    """--update-every K: the steps from --learning-starts (10) to 40 that K divides run the updates (4: 12, 16 ... 40);
    K = 1 updates on every step from the first, as before the flag."""
    monkeypatch.chdir(tmp_path)
    args = tiny_args(env_ids=["A", "B"], update_every=update_every)
    ckpt = torch.load(main(args, make_env=lambda game, seed: PixelGame(game, seed)), weights_only=True)
    assert ckpt["optimizer"]["state"][0]["step"].item() == updates
    assert ckpt["args"]["update_every"] == update_every  # saved with the run's other flags


def test_refuses_a_buffer_that_cannot_fit(monkeypatch):
    monkeypatch.setattr(run_utils, "available_memory", lambda device: 2**30)
    with pytest.raises(SystemExit, match=r"replay buffer \(2 games x 1,000,000 frames\) needs 13\.16 GiB"):
        main(tiny_args(buffer_size=1_000_000))


def test_learns_a_pixel_game_with_two_game_embeddings(tmp_path, monkeypatch, capsys, one_thread):
    """Both games show the same frames but reward different actions: only the game embedding tells them apart.

    In each frame the two games reward different actions, so a policy that ignores the embedding scores at most 10 in
    both games together; random play scores 2.5 in each. The test asks for a total of at least 14 and at least 5 in
    each game. Measured at 800 steps (A / B), seeds 3 (this test's), 4, 5: AVX-512 kernels 9.5/6.7, 7.6/9.5, 8.7/9.9;
    AVX2 kernels 8.2/8.2, 8.9/8.9, 9.7/9.7. The worst total is 16.2 and the worst game 6.7.
    (A single bar of 7 per game, as before, failed on AVX-512 with 6.7.)"""
    monkeypatch.chdir(tmp_path)
    args = Args(
        env_ids=["A", "B"],
        critic_width=64,
        encoder_width=2,
        batch_size=32,
        buffer_size=5000,
        learning_starts=100,
        total_timesteps=800,
        eval_interval=800,
        eval_episodes=10,
        log_interval=400,
        epsilon_decay_steps=200,
        learning_rate=1e-3,
        cuda=False,
        seed=3,
    )
    main(args, make_env=lambda game, seed: PixelGame(game, seed))
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("eval @ 800"))
    scores = [float(line.split(f" {g} ")[1].split()[0]) for g in "AB"]
    assert sum(scores) >= 14.0 and min(scores) >= 5.0, line  # 10 = always right, 2.5 = random
