"""MetaWorld in bro_mt.py: the wrapper against the package's own scripted experts, goals, exact resume, success
rates, task names, and a mixed MetaWorld + dm_control run that trains, evaluates, logs success and resumes exactly."""

import io
import os

import imageio
import numpy as np
import pytest
import torch
from test_mt_train import scalars

import bro_mt
from brc_utils import envs as brc_envs

MIXED = dict(
    env_ids=["metaworld-reach-v3", "cartpole-balance"],
    critic_width=32,
    batch_size=32,
    learning_starts=50,
    eval_interval=100,
    eval_episodes=2,
    log_interval=50,
    max_episode_steps=40,
    buffer_size=1000,
    metaworld_goals="random",
)


def expert_rollout(env: brc_envs.MetaWorldEnv, policy, seed: int) -> tuple[bool, int]:
    """One episode of the package's scripted expert through our wrapper. It reads the unpadded float64
    observation the package would give it; the padded action dims get junk that the wrapper must ignore."""
    obs, _ = env.reset(seed=seed)
    assert obs.dtype == np.float32 and obs.shape == (45,) and not obs[39:].any()
    for step in range(1, 201):
        action = np.concatenate([policy.get_action(obs[:39].astype(np.float64)), [0.9, -0.9]])
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated and 0 <= reward <= 10
        if info["success"]:
            return True, step
        if truncated:
            return False, step
    raise AssertionError("the episode ran past its 200-step limit")


# Tasks whose experts need a grasp, a push, a pull or a press; 1 s to 3 s each.
@pytest.mark.filterwarnings("ignore:Constant\\(s\\) may be too high")  # the package's experts say so, harmlessly
@pytest.mark.parametrize("task", ["reach-v3", "push-v3", "pick-place-v3", "drawer-open-v3", "button-press-topdown-v3"])
def test_scripted_experts_succeed_through_the_wrapper(task):
    from metaworld.policies import ENV_POLICY_MAP  # after bro_mt, which sets MUJOCO_GL before MuJoCo loads

    env = brc_envs.MetaWorldEnv(f"metaworld-{task}", 0, pad_to=(45, 6), goals="random")
    policy = ENV_POLICY_MAP[task]()
    results = [expert_rollout(env, policy, seed) for seed in range(3)]
    assert all(success for success, _ in results), results
    # A policy that does nothing never succeeds: success is not a constant.
    env.reset(seed=0)
    assert not any(env.step(np.zeros(6))[4]["success"] for _ in range(200))


def test_fixed_goals_repeat_random_goals_move_and_both_follow_the_seed():
    def starts(goals, seed, episodes=3):
        env = brc_envs.MetaWorldEnv("metaworld-push-v3", seed, goals=goals)
        return [env.reset(seed=100 if i == 0 else None)[0] for i in range(episodes)]

    fixed, random = starts("fixed", 0), starts("random", 0)
    assert all(np.array_equal(fixed[0], start) for start in fixed)  # one configuration per env, as released
    assert not np.array_equal(random[0][36:], random[1][36:])  # the goal (last 3 dims) moves every episode
    for goals in ("fixed", "random"):
        np.testing.assert_array_equal(starts(goals, 0), starts(goals, 0))  # no global RNG: the same seed, the same
    assert not np.array_equal(starts("fixed", 0)[0], starts("fixed", 1)[0])  # an eval env's seed, another goal
    # MetaWorld truncates at our limit (200 by default) and never terminates.
    env = brc_envs.MetaWorldEnv("metaworld-reach-v3", 0)
    env.reset()
    flags = [env.step(np.zeros(4))[2:4] for _ in range(200)]
    assert flags == [(False, False)] * 199 + [(False, True)]


# door-lock and pick-place keep positions as views into the simulation's data, which a restore must keep as views.
@pytest.mark.parametrize("task", ["reach-v3", "door-lock-v3", "pick-place-v3"])
def test_metaworld_env_resumes_exactly_across_an_episode_end(task):
    rng = np.random.default_rng(0)

    def roll(env, actions):
        out = []
        for action in actions:
            obs, reward, _, truncated, info = env.step(action)
            out.append((obs.copy(), reward, truncated, info["success"]))
            if truncated:  # a new episode draws new positions from the env's generator
                out.append((env.reset()[0].copy(), None, None, None))
        return out

    env = brc_envs.MetaWorldEnv(f"metaworld-{task}", 5, max_episode_steps=40, goals="random")
    env.reset(seed=7)
    roll(env, rng.uniform(-1, 1, (55, 4)))
    buffer = io.BytesIO()
    torch.save(env.state, buffer)  # through a checkpoint file, loaded as --resume loads it
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    actions = rng.uniform(-1, 1, (80, 4))  # 25 steps to the episode's end, a whole episode, 15 more
    first = roll(env, actions)
    other = brc_envs.MetaWorldEnv(f"metaworld-{task}", 123, max_episode_steps=40, goals="random")
    other.reset()
    other.state = saved  # another seed and another goal: everything must come from the state
    second = roll(other, actions)
    assert sum(1 for x in first if x[1] is None) == 2
    assert len(first) == len(second)
    for (o1, *rest1), (o2, *rest2) in zip(first, second):
        np.testing.assert_array_equal(o1, o2)
        assert rest1 == rest2


def test_metaworld_renders_frames_that_follow_the_arm():
    env = brc_envs.MetaWorldEnv("metaworld-reach-v3", 0)
    env.reset()
    before = env.render()
    for _ in range(20):
        env.step(np.array([1.0, 0.0, 0.0, 0.0]))  # the hand moves sideways
    after = env.render()
    assert before.shape == after.shape == (256, 256, 3) and before.dtype == np.uint8
    assert before.std() > 10 and np.abs(before.astype(int) - after).mean() > 0.5


class SuccessAt:
    """A stand-in env that reports success only at step `at` of the episodes listed in `successful`."""

    def __init__(self, successful, at=3, length=5):
        self.env_id, self.successful, self.at, self.length, self.episode = "stub", successful, at, length, -1
        self.action_space = brc_envs.gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None):
        self.episode, self.t = self.episode + 1, 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        success = self.episode in self.successful and self.t == self.at
        return np.zeros(2, np.float32), 1.0, False, self.t == self.length, {"success": success}


def test_evaluation_counts_an_episode_successful_if_any_step_is():
    envs = [SuccessAt({0, 2}), SuccessAt({1, 2, 3}), brc_envs.DMCEnv("cartpole-balance", 0, max_episode_steps=5)]
    critic, actor = bro_mt.Critic(5, 1, 3, 16), bro_mt.Actor(5, 1, 32)
    returns, successes = bro_mt.evaluate(actor, critic, envs, torch.arange(3), 5, 4, torch.ones(3, 1), "cpu", seed=0)
    # Success at step 3 of 5 only, later steps report none: 2 of 4 and 3 of 4; an env that reports nothing: 0.
    np.testing.assert_allclose(successes, [0.5, 0.75, 0.0])
    np.testing.assert_allclose(returns[:2], [5.0, 5.0])


def test_task_names_and_suites():
    mt10 = brc_envs.resolve_env_ids(["MW_MT10"])
    assert len(mt10) == 10 and mt10[0] == "metaworld-reach-v3" and set(mt10) <= set(brc_envs.metaworld_tasks())
    mt50 = brc_envs.resolve_env_ids(["MW_MT50", "dog-run"])
    assert len(mt50) == 51 and mt50[-1] == "dog-run" and "metaworld-disassemble-v3" in mt50
    for wrong, hint in [
        ("metaworld-reach-v2", "metaworld-reach-v3"),
        ("metaworld-pickplace-v3", "metaworld-pick-place-v3"),
    ]:
        with pytest.raises(
            SystemExit, match=f"unknown task id\\(s\\) \\['{wrong}'\\]. {wrong}: did you mean {hint}\\?"
        ):
            brc_envs.resolve_env_ids(["cartpole-balance", wrong])
    with pytest.raises(SystemExit, match="MetaWorld v3 ids such as metaworld-reach-v3"):
        brc_envs.resolve_env_ids(["reach-v3-goal-observable-nothing-like-it"])


def test_training_episodes_log_success_at_any_step_including_the_last(monkeypatch):
    """Success on one step of some episodes, scripted in MetaWorld's own env: the adapter reports at each episode's
    last step whether any step succeeded (info["episode_success"], which the vector env passes in final_info). Each
    finished MetaWorld episode logs charts/success/{task}, dm_control ones nothing."""
    init = brc_envs.MetaWorldEnv.__init__

    def scripted_init(
        self, *args, **kwargs
    ):  # 40-step episodes: success at step 10 of episode 1, step 40 (the last) of 3
        init(self, *args, **kwargs)
        inner_step = self.env.step

        def step(action):
            obs, reward, terminated, truncated, info = inner_step(action)
            scripted = (getattr(self, "episodes_started", 0), self.env.curr_path_length) in {(1, 10), (3, 40)}
            return obs, reward, terminated, truncated, {**info, "success": float(scripted)}

        self.env.step = step

    reset = brc_envs.MetaWorldEnv.reset

    def counting_reset(self, seed=None, options=None):
        self.episodes_started = getattr(self, "episodes_started", 0) + 1
        return reset(self, seed, options)

    monkeypatch.setattr(brc_envs.MetaWorldEnv, "__init__", scripted_init)
    monkeypatch.setattr(brc_envs.MetaWorldEnv, "reset", counting_reset)
    path = bro_mt.main(bro_mt.Args(**{**MIXED, "total_timesteps": 160, "learning_starts": 1000, "eval_interval": 1000}))
    logged = scalars(os.path.dirname(path))
    assert logged["charts/success/metaworld-reach-v3"] == [1.0, 0.0, 1.0, 0.0]
    assert "charts/success/cartpole-balance" not in logged


def test_mixed_metaworld_and_dm_control_run_trains_logs_success_and_resumes_exactly(capsys):
    def run(**overrides):
        return bro_mt.main(bro_mt.Args(**{**MIXED, **overrides}))

    full_path = run(total_timesteps=200, save_buffer=True, capture_video=True)
    out = capsys.readouterr().out
    video_dir = os.path.join(os.path.dirname(full_path), "videos", "step200")
    assert sorted(os.listdir(video_dir)) == ["cartpole-balance.mp4", "metaworld-reach-v3.mp4"]
    # Full-size frames, although the start-up check rendered the first task at 16 x 16.
    assert imageio.v3.improps(os.path.join(video_dir, "metaworld-reach-v3.mp4")).shape[1:] == (256, 256, 3)
    assert "tasks (2): metaworld-reach-v3 (obs 39, act 4), cartpole-balance (obs 5, act 1)" in out
    assert "eval @ 200: mean_return " in out and " success_rate " in out
    logged = scalars(os.path.dirname(full_path))
    assert len(logged["eval/success/metaworld-reach-v3"]) == len(logged["eval/success_rate"]) == 2
    assert set(logged["eval/success_rate"]) <= {0.0, 0.5, 1.0}  # 2 episodes of one MetaWorld task
    assert "eval/success/cartpole-balance" not in logged  # dm_control reports no success
    assert len(logged["charts/episodic_return/metaworld-reach-v3"]) == len(logged["charts/success/metaworld-reach-v3"])
    assert len(logged["charts/success/metaworld-reach-v3"]) == 200 // 40
    full = torch.load(full_path, weights_only=True)
    assert full["critic_optimizer"]["state"][0]["step"].item() == 2 * (200 - 50 + 1)  # real gradient updates

    # Stopped at step 110 (mid-episode: 40-step episodes) and resumed: the same numbers as the uninterrupted run.
    resumed = torch.load(run(total_timesteps=200, save_buffer=True, resume=run(total_timesteps=110, save_buffer=True)))
    for key in ["actor", "critic", "target_critic"]:
        for name, value in full[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0, msg=f"{key}.{name}")
    torch.testing.assert_close(resumed["obs"], full["obs"], rtol=0, atol=0)
    assert torch.equal(resumed["log_alpha"], full["log_alpha"])
