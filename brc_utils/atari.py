"""Atari adapters of bro_atari.py: ALE games with the standard preprocessing, the game suites and the random / human
reference scores. Not BRC: a student never needs this file to learn the method (bro_atari.py's docstring lists every
preprocessing choice and why).

  Suites and reference scores  ATARI_5, ATARI_100K_26, ATARI_57, ATARI_QUICK; `resolve_env_ids`
  AtariGame .................. one ALE game: no-op starts, 4 frames per action with a max over the last two, 84x84
                               grayscale frames, life-loss flags, exact-resume state
  GameEnv, make_game_envs ..... an AtariGame as a gymnasium env; all games' training envs as one vector env
"""

import difflib
from functools import partial
from typing import Callable, Optional

import ale_py
import gymnasium as gym
import numpy as np
import torch
from PIL import Image

from brc_utils.run import make_vector_env

# ALE prints a banner ("A.L.E: Arcade Learning Environment ... [Powered by Stella]") for every emulator it loads,
# from every process; it says nothing a user can act on. Its warnings and errors still show.
ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)

FRAME_SIZE, FRAME_SKIP = 84, 4  # 84x84 grayscale frames; each action repeats for 4 emulator frames


# ---- Suites and reference scores ----
# Random-agent and human scores of the 57 games (the standard references of human-normalised scores).
REFERENCE_SCORES = {
    "Alien": (227.8, 7127.7), "Amidar": (5.8, 1719.5), "Assault": (222.4, 742.0), "Asterix": (210.0, 8503.3),
    "Asteroids": (719.1, 47388.7), "Atlantis": (12850.0, 29028.1), "BankHeist": (14.2, 753.1),
    "BattleZone": (2360.0, 37187.5), "BeamRider": (363.9, 16926.5), "Berzerk": (123.7, 2630.4),
    "Bowling": (23.1, 160.7), "Boxing": (0.1, 12.1), "Breakout": (1.7, 30.5), "Centipede": (2090.9, 12017.0),
    "ChopperCommand": (811.0, 7387.8), "CrazyClimber": (10780.5, 35829.4), "Defender": (2874.5, 18688.9),
    "DemonAttack": (152.1, 1971.0), "DoubleDunk": (-18.6, -16.4), "Enduro": (0.0, 860.5),
    "FishingDerby": (-91.7, -38.7), "Freeway": (0.0, 29.6), "Frostbite": (65.2, 4334.7), "Gopher": (257.6, 2412.5),
    "Gravitar": (173.0, 3351.4), "Hero": (1027.0, 30826.4), "IceHockey": (-11.2, 0.9), "Jamesbond": (29.0, 302.8),
    "Kangaroo": (52.0, 3035.0), "Krull": (1598.0, 2665.5), "KungFuMaster": (258.5, 22736.3),
    "MontezumaRevenge": (0.0, 4753.3), "MsPacman": (307.3, 6951.6), "NameThisGame": (2292.3, 8049.0),
    "Phoenix": (761.4, 7242.6), "Pitfall": (-229.4, 6463.7), "Pong": (-20.7, 14.6), "PrivateEye": (24.9, 69571.3),
    "Qbert": (163.9, 13455.0), "Riverraid": (1338.5, 17118.0), "RoadRunner": (11.5, 7845.0), "Robotank": (2.2, 11.9),
    "Seaquest": (68.4, 42054.7), "Skiing": (-17098.1, -4336.9), "Solaris": (1236.3, 12326.7),
    "SpaceInvaders": (148.0, 1668.7), "StarGunner": (664.0, 10250.0), "Surround": (-10.0, 6.5),
    "Tennis": (-23.8, -8.3), "TimePilot": (3568.0, 5229.2), "Tutankham": (11.4, 167.6), "UpNDown": (533.4, 11693.2),
    "Venture": (0.0, 1187.5), "VideoPinball": (0.0, 17667.9), "WizardOfWor": (563.5, 4756.5),
    "YarsRevenge": (3092.9, 54576.9), "Zaxxon": (32.5, 9173.3),
}  # fmt: skip
ATARI_100K_26 = [
    "Alien", "Amidar", "Assault", "Asterix", "BankHeist", "BattleZone", "Boxing", "Breakout", "ChopperCommand",
    "CrazyClimber", "DemonAttack", "Freeway", "Frostbite", "Gopher", "Hero", "Jamesbond", "Kangaroo", "Krull",
    "KungFuMaster", "MsPacman", "Pong", "PrivateEye", "Qbert", "RoadRunner", "Seaquest", "UpNDown",
]  # fmt: skip
SUITES = {
    "ATARI_5": ["BattleZone", "DoubleDunk", "NameThisGame", "Phoenix", "Qbert"],  # Aitchison et al., 2023
    "ATARI_100K_26": ATARI_100K_26,  # the Atari-100k benchmark (Kaiser et al., 2020)
    "ATARI_57": list(REFERENCE_SCORES),
    "ATARI_QUICK": ["Pong", "Breakout", "Boxing"],  # quick to learn, for a first run on one GPU
}


def resolve_env_ids(env_ids: list[str]) -> list[str]:
    """Expand suite names and check every game against ALE's registry before anything heavy starts."""
    gym.register_envs(ale_py)
    valid = sorted(k[4:-3] for k in gym.registry if k.startswith("ALE/") and k.endswith("-v5"))
    games = [g for name in env_ids for g in SUITES.get(name, [name])]
    unknown = [g for g in games if g not in valid]
    if unknown or not games:
        hints = [f"{g} -> {m[0]}?" for g in unknown for m in [difflib.get_close_matches(g, valid, 1)] if m]
        hint = f" ({', '.join(hints)})" if hints else ""
        raise SystemExit(
            f"unknown Atari game(s) {unknown or env_ids}{hint}. "
            f"Use ALE names such as Pong or MsPacman, or a suite: {', '.join(SUITES)}."
        )
    if len(set(games)) != len(games):
        raise SystemExit(f"game list {games} names a game twice; each game must appear once")
    return games


# ---- The ALE game with its preprocessing ----
class AtariGame:
    """One ALE game with the standard preprocessing (Mnih et al., 2015; Machado et al., 2018).

    reset() -> frame; step(action) -> (frame, reward, terminated, truncated, life_lost). A frame is the
    84x84 uint8 grayscale max of the last two emulator frames of an action repeated 4 times. The training loop
    stacks frames itself, so that replay can store each frame once.
    """

    def __init__(
        self, game: str, seed: int, full_action_space: bool = True, repeat_action_probability: float = 0.25,
        noop_max: int = 30, max_episode_frames: int = 108_000,
    ):  # fmt: skip
        gym.register_envs(ale_py)
        self.env = gym.make(
            f"ALE/{game}-v5", frameskip=1, repeat_action_probability=repeat_action_probability,
            full_action_space=full_action_space, max_num_frames_per_episode=max_episode_frames,
        )  # fmt: skip
        self.env.reset(seed=seed)  # seeds the emulator (sticky actions, game randomness)
        self.game, self.ale = game, self.env.unwrapped.ale
        self.action_set = self.env.unwrapped._action_set
        self.num_actions = len(self.action_set)
        self.noop_max, self.noop_rng = noop_max, np.random.default_rng(seed)
        self.screens = np.zeros((2, 210, 160), np.uint8)
        self.lives, self.last_action = 0, 0  # ALE starts every episode with the no-op as the action to repeat

    def _frame(self) -> np.ndarray:
        pooled = Image.fromarray(self.screens.max(axis=0))  # the max removes sprites' flicker between frames
        return np.asarray(pooled.resize((FRAME_SIZE, FRAME_SIZE), Image.Resampling.BOX))  # area averaging

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        if seed is not None:
            self.env.reset(seed=seed)
            self.noop_rng = np.random.default_rng(seed)
        self.ale.reset_game()
        self.last_action = 0
        for _ in range(self.noop_rng.integers(1, self.noop_max + 1) if self.noop_max else 0):
            self.ale.act(self.action_set[0])
            if self.ale.game_over():
                self.ale.reset_game()
        self.ale.getScreenGrayscale(self.screens[0])
        self.screens[1] = self.screens[0]
        self.lives = self.ale.lives()
        return self._frame()

    def step(self, action: int):
        reward, self.last_action = 0.0, int(action)
        for skip in range(FRAME_SKIP):
            reward += self.ale.act(self.action_set[action])
            if skip == FRAME_SKIP - 2:
                self.ale.getScreenGrayscale(self.screens[0])
            if self.ale.game_over():
                break
        self.ale.getScreenGrayscale(self.screens[1])
        if skip < FRAME_SKIP - 2:  # the game ended early: nothing to max-pool with
            self.screens[0] = self.screens[1]
        terminated = self.ale.game_over(with_truncation=False)
        truncated = self.ale.game_truncated() and not terminated
        life_lost = self.ale.lives() < self.lives
        self.lives = self.ale.lives()
        return self._frame(), reward, terminated, truncated, life_lost

    def render(self) -> np.ndarray:
        return self.ale.getScreenRGB()

    # -- exact resume: the emulator with its RNG (sticky actions), the no-op RNG, lives, screens, last action --
    def get_state(self) -> dict:
        ale_state = np.frombuffer(self.ale.cloneState(include_rng=True).serialize(), np.uint8).copy()
        screens = torch.from_numpy(self.screens.copy())
        rngs = {"ale": torch.from_numpy(ale_state), "noop_rng": self.noop_rng.bit_generator.state}
        return {**rngs, "lives": self.lives, "screens": screens, "last_action": self.last_action}

    def set_state(self, state: dict):
        # ALE's state leaves out the action that sticky actions repeat. Act with the last action until it holds (odds
        # that 16 acts all repeat the old one: 0.25^16), then restore the state. Exact unless all four frames of the
        # last step repeated the action before it (odds 0.25^4): ALE does not say which action it applied.
        for _ in range(16):
            self.ale.act(self.action_set[state.get("last_action", 0)])  # checkpoints from before it: the no-op
        self.ale.restoreState(ale_py.ALEState(state["ale"].numpy().tobytes()))
        self.noop_rng.bit_generator.state = state["noop_rng"]
        self.lives, self.screens = state["lives"], state["screens"].numpy().copy()


class GameEnv(gym.Env):
    """A game with AtariGame's interface as a gymnasium env, for the training loop's vector env (which steps every
    game in its own worker process with --async-envs). The observation is the newest frame (the loop stacks frames
    itself), info["life_lost"] says the step cost a life, and `state` reaches get_state/set_state for checkpoints."""

    def __init__(self, make_env: Callable, game: str, seed: int):
        self.game = make_env(game, seed)
        self.observation_space = gym.spaces.Box(0, 255, (FRAME_SIZE, FRAME_SIZE), np.uint8)
        self.action_space = gym.spaces.Discrete(self.game.num_actions)

    def reset(self, seed: Optional[int] = None, options=None):
        return self.game.reset(seed), {}

    def step(self, action):
        frame, reward, terminated, truncated, life_lost = self.game.step(action)
        return frame, reward, terminated, truncated, {"life_lost": bool(life_lost)}

    state = property(lambda self: self.game.get_state(), lambda self, state: self.game.set_state(state))


def make_game_envs(make_game: Callable, games: list, seed: int, async_envs: bool) -> gym.vector.VectorEnv:
    """The training envs: one GameEnv per game (game i seeded with seed + i), stepped together as one vector env, in
    this process or, with --async-envs, each in a worker process (run.make_vector_env). Where an episode ends, the
    step returns the next episode's first frame; the true last one is in infos["final_obs"]."""
    env_fns = [partial(GameEnv, make_game, game, seed + i) for i, game in enumerate(games)]
    return make_vector_env(env_fns, async_envs)
