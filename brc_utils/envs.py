"""Environment adapters of bro_mt.py: dm_control and MetaWorld tasks as gymnasium envs, the task suites, and the
simulator state that exact resume saves. Not BRC: a student never needs this file to learn the method.

  Suites and task ids ...... DMC_* and MW_* suites, `resolve_env_ids` (checks every id, suggests the closest name)
  DMCEnv ................... a dm_control task with flat float32 observations, actions in [-1, 1], true terminations
  MetaWorldEnv ............. a MetaWorld v3 task, goal-observable, 200-step episodes, success flags
  make_env, make_task_envs . one task's env from its id; all tasks' training envs as one vector env
  Simulator state .......... a MuJoCo simulation's full state and a wrapper's plain attributes, for checkpoints

Every env zero-pads its observation and cuts the actor's action to its own size (`pad_to`): how tasks of different
sizes share one network is BRC's design, explained in bro_mt.py ("Tasks").
"""

import difflib
import math
import os
from functools import partial
from typing import Optional

# MuJoCo picks its rendering backend when dm_control is imported. EGL renders headless on GPUs and most Linux
# machines; set MUJOCO_GL=osmesa (Debian: libosmesa6) where EGL is missing.
os.environ.setdefault("MUJOCO_GL", "egl")
import gymnasium as gym
import numpy as np
import torch

from brc_utils.run import make_vector_env

try:  # MuJoCo loads the MUJOCO_GL renderer on import: an unknown name or a missing library fails here
    import mujoco
    from dm_control import suite
except (ImportError, RuntimeError, AttributeError) as error:
    raise SystemExit(
        f"MuJoCo cannot start with MUJOCO_GL={os.environ['MUJOCO_GL']!r} ({type(error).__name__}: {error}). "
        "Use MUJOCO_GL=egl (Debian: libegl1) or MUJOCO_GL=osmesa (libosmesa6); without videos MUJOCO_GL=disable works."
    ) from None


# ---- Suites and task ids ----
SUITES = {
    "DMC_DOGS": ["dog-stand", "dog-walk", "dog-trot", "dog-run"],
    "DMC_HUMANOIDS": ["humanoid-stand", "humanoid-walk", "humanoid-run"],
    "DMC_HARD": ["dog-stand", "dog-walk", "dog-trot", "dog-run", "humanoid-stand", "humanoid-walk", "humanoid-run"],
    # Small suites with different observation and action sizes, for a laptop.
    "DMC_EASY": ["cartpole-balance", "cartpole-swingup", "point_mass-easy", "reacher-easy"],
    "DMC_TINY": ["cartpole-balance", "point_mass-easy"],
    # MetaWorld's MT10 (robot-arm manipulation, scored by success rate); MW_MT50 is all 50 tasks, from the package.
    "MW_MT10": [
        f"metaworld-{task}-v3"
        for task in (
            "reach push pick-place door-open drawer-open drawer-close button-press-topdown peg-insert-side window-open "
            "window-close"
        ).split()
    ],
}


def metaworld_tasks() -> list[str]:
    """All MetaWorld v3 task ids, metaworld-<task>; the package is imported only when a run asks for it (~1.5 s)."""
    try:
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS
    except ImportError as error:
        raise SystemExit(f"MetaWorld tasks need metaworld ({error}): pip install -r requirements.txt") from None
    return [f"metaworld-{name}" for name in ALL_V3_ENVIRONMENTS]


def resolve_env_ids(env_ids: list[str]) -> list[str]:
    """Expand suite names and check every id against dm_control and MetaWorld before anything heavy starts."""
    names = [t for name in env_ids for t in SUITES.get(name, [name])]
    metaworld = metaworld_tasks() if any(t == "MW_MT50" or t.startswith("metaworld-") for t in names) else []
    tasks = [t for name in names for t in (metaworld if name == "MW_MT50" else [name])]
    valid = {f"{domain}-{task}" for domain, task in suite.ALL_TASKS} | set(metaworld)
    unknown = [t for t in tasks if t not in valid]
    if unknown or not tasks:
        domains = ", ".join(sorted({d for d, _ in suite.ALL_TASKS}))
        close = {t: difflib.get_close_matches(t, valid, n=1) for t in unknown}
        hints = "".join(f" {t}: did you mean {match[0]}?" for t, match in close.items() if match)
        raise SystemExit(
            f"unknown task id(s) {unknown or env_ids}.{hints} Use dm_control `domain-task` ids such as dog-run or "
            f"cartpole-swingup (domains: {domains}), MetaWorld v3 ids such as metaworld-reach-v3 or "
            f"metaworld-pick-place-v3 (MW_MT50 runs all 50), or a suite: {', '.join(SUITES)}, MW_MT50."
        )
    if len(set(tasks)) != len(tasks):
        raise SystemExit(f"task list {tasks} names a task twice; each task must appear once")
    return tasks


# ---- dm_control and MetaWorld as gymnasium envs ----
class DMCEnv(gym.Env):
    """A dm_control task as a gymnasium env: the observation dict flattened to float32, actions in [-1, 1].

    `terminated` is a true termination (dm_control's discount 0); `truncated` is the time limit, which bootstraps.
    pad_to=(obs_dim, action_dim): zero-pad observations and ignore the extra action dims (see Tasks).
    """

    def __init__(self, env_id: str, seed: int, max_episode_steps: Optional[int] = None, pad_to: Optional[tuple] = None):
        domain, task = env_id.split("-", 1)
        self.env_id = env_id
        self.env = suite.load(domain, task, task_kwargs={"random": seed})
        spec = self.env.action_spec()
        self.action_low, self.action_high = spec.minimum, spec.maximum
        self.obs_size = sum(int(np.prod(v.shape)) for v in self.env.observation_spec().values())
        self.action_size = spec.shape[0]
        obs_dim, action_dim = pad_to or (self.obs_size, self.action_size)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.max_episode_steps = max_episode_steps
        self.episode_step = 0

    def _flat(self, observation) -> np.ndarray:
        flat = np.concatenate([np.asarray(v, np.float32).ravel() for v in observation.values()])
        return np.pad(flat, (0, self.observation_space.shape[0] - self.obs_size))

    def reset(self, seed: Optional[int] = None, options=None):
        if seed is not None:
            self.env.task.random.seed(seed)
        self.episode_step = 0
        return self._flat(self.env.reset().observation), {}

    def step(self, action):
        action = np.clip(action[: self.action_size], -1, 1)
        action = self.action_low + (action + 1) / 2 * (self.action_high - self.action_low)
        ts = self.env.step(action)
        self.episode_step += 1
        terminated = ts.last() and ts.discount == 0
        truncated = (ts.last() and not terminated) or self.episode_step == self.max_episode_steps
        return self._flat(ts.observation), float(ts.reward), terminated, truncated, {}

    def render(self, size: int = 256) -> np.ndarray:
        return self.env.physics.render(height=size, width=size, camera_id=0)

    # -- exact resume: the simulator's full state (with the targets a task places in the model) and the task's RNG --
    def get_state(self) -> dict:
        physics = simulator_state(self.env.physics.model.ptr, self.env.physics.data.ptr)
        _, keys, pos, has_gauss, cached = self.env.task.random.get_state()
        rng = {"rng_keys": torch.from_numpy(keys.astype(np.int64)), "rng_pos": pos, "rng_has_gauss": has_gauss}
        steps = {"step": self.episode_step, "dm_step": self.env._step_count}
        return {"physics": physics, **rng, "rng_cached": cached, **steps}

    def set_state(self, state: dict):
        self.env.reset()
        set_simulator_state(self.env.physics.model.ptr, self.env.physics.data.ptr, state["physics"])
        keys = state["rng_keys"].numpy().astype(np.uint32)
        self.env.task.random.set_state(("MT19937", keys, state["rng_pos"], state["rng_has_gauss"], state["rng_cached"]))
        self.episode_step, self.env._step_count = state["step"], state["dm_step"]  # dm_control's own time limit

    state = property(get_state, set_state)  # what the vector env's get_attr/set_attr reach


METAWORLD_EPISODE_STEPS = 200  # the released code's cut (MetaWorld v3's own limit is 500)


class MetaWorldEnv(gym.Env):
    """A MetaWorld v3 task (metaworld-reach-v3, ...), goal-observable like the released code's tasks: a 39-dim
    observation (hand, gripper, objects, their previous values, the goal's position) to float32, padded; 4 actions
    in [-1, 1] (the hand's xyz move, the grip). MetaWorld never terminates: episodes are truncated after 200 steps,
    and bootstrap. info["success"] is MetaWorld's per-step flag; evaluation counts an episode a success if any
    step is, and the last step of an episode reports info["episode_success"]: whether any of its steps succeeded
    (as gymnasium's RecordEpisodeStatistics reports an episode's return).

    goals="fixed" (the released code): the object and goal positions are drawn once, from the seed, when the env
    is built. Every training episode of a task starts the same way, and the evaluation envs (other seeds) test other
    positions. goals="random": new positions every episode, drawn from the env's own seeded generator.
    """

    def __init__(self, env_id, seed, max_episode_steps=None, pad_to=None, goals: str = "fixed"):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE as TASKS

        self.env_id = env_id
        self.env = TASKS[env_id.removeprefix("metaworld-") + "-goal-observable"](seed=seed)
        self.env._freeze_rand_vec = goals == "fixed"
        self.env.seeded_rand_vec = True  # new positions come from env.np_random, not NumPy's global generator
        self.env.max_path_length = max_episode_steps or METAWORLD_EPISODE_STEPS  # it truncates there, never steps on
        self.obs_size, self.action_size = self.env.observation_space.shape[0], self.env.action_space.shape[0]
        obs_dim, action_dim = pad_to or (self.obs_size, self.action_size)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.renderer = None
        self.episode_success = False  # did any step of the current episode succeed?

    def _pad(self, obs: np.ndarray) -> np.ndarray:
        return np.pad(obs.astype(np.float32), (0, self.observation_space.shape[0] - self.obs_size))

    def reset(self, seed: Optional[int] = None, options=None):
        if seed is not None:
            self.env.seed(seed)  # MetaWorld ignores reset(seed=...)
        self.episode_success = False
        return self._pad(self.env.reset()[0]), {}

    def step(self, action):
        obs, reward, _, truncated, info = self.env.step(np.clip(action[: self.action_size], -1, 1))
        self.episode_success |= bool(info["success"])
        info = {"success": bool(info["success"])}
        if truncated:  # MetaWorld never terminates
            info["episode_success"] = self.episode_success
        return self._pad(obs), float(reward), False, truncated, info

    def render(self, size: int = 256) -> np.ndarray:
        if self.renderer is None or self.renderer.height != size:
            self.close()
            self.renderer = mujoco.Renderer(self.env.model, size, size)
        self.renderer.update_scene(self.env.data, camera="corner")
        return self.renderer.render()[::-1, ::-1].copy()  # MetaWorld's cameras look upside down

    def close(self):
        if self.renderer is not None:  # its OpenGL context, freed while OpenGL still runs (not at interpreter exit)
            self.renderer.close()
            self.renderer = None

    # -- exact resume: the simulator's full state, MetaWorld's per-episode attributes (goal, step count, last
    # observation, ...) and its random generator --
    def get_state(self) -> dict:
        physics = simulator_state(self.env.model, self.env.data)
        return {
            "physics": physics,
            "attributes": plain_attributes(self.env, self.env.data),
            "rng": self.env.np_random.bit_generator.state,
            "episode_success": self.episode_success,
        }

    def set_state(self, state: dict):
        set_simulator_state(self.env.model, self.env.data, state["physics"])
        set_plain_attributes(self.env, state["attributes"], self.env.data)
        self.env.np_random.bit_generator.state = state["rng"]
        self.episode_success = state.get("episode_success", False)  # checkpoints from before it: none so far

    state = property(get_state, set_state)


def make_env(env_id: str, seed: int, max_episode_steps=None, pad_to=None, metaworld_goals: str = "fixed") -> gym.Env:
    """One task's environment: MetaWorld for metaworld-* ids, dm_control otherwise."""
    if env_id.startswith("metaworld-"):
        return MetaWorldEnv(env_id, seed, max_episode_steps, pad_to, metaworld_goals)
    return DMCEnv(env_id, seed, max_episode_steps, pad_to)


def make_task_envs(env_ids, seed, max_episode_steps, pad_to, metaworld_goals, async_envs) -> gym.vector.VectorEnv:
    """The training envs: one per task (task i seeded with seed + i), stepped together as one vector env, in this
    process or, with --async-envs, each in a worker process (run.make_vector_env). Where an episode ends, the step
    returns the next episode's first observation; the true last one is in infos["final_obs"]."""
    env_fns = [
        partial(make_env, env_id, seed + i, max_episode_steps, pad_to, metaworld_goals)
        for i, env_id in enumerate(env_ids)
    ]
    return make_vector_env(env_fns, async_envs)


# ---- Simulator state (exact resume) ----
# The model fields a task may move when it starts an episode: dm_control's reacher, fish, swimmer and finger place
# their targets there, MetaWorld its objects and goals. Saved with the simulation state, so a resume mid-episode keeps them.
MOVABLE_MODEL_FIELDS = ("body_pos", "body_quat", "geom_pos", "geom_quat", "site_pos", "site_quat")


def simulator_state(model, data) -> dict:
    """A MuJoCo simulation's full integration state (time, positions, velocities, actuators, mocap bodies, controls,
    warm start) and the movable model fields, as tensors (raw mujoco.MjModel / MjData)."""
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    fields = {name: torch.from_numpy(getattr(model, name).copy()) for name in MOVABLE_MODEL_FIELDS}
    return {"integration": torch.from_numpy(state), **fields}


def set_simulator_state(model, data, state: dict):
    """Restore what simulator_state saved and recompute the derived quantities (positions of bodies, sites, ...)."""
    if not isinstance(state, dict):  # before MetaWorld: dm_control's state alone, from MuJoCo 3.17
        raise SystemExit(
            "this checkpoint's simulator state comes from an earlier version of this code (MuJoCo 3.17, before "
            "MetaWorld support) and cannot be restored on MuJoCo 3.3: start a new run, or resume with that version"
        )
    for name in MOVABLE_MODEL_FIELDS:
        getattr(model, name)[:] = state[name].numpy()
    spec, integration = mujoco.mjtState.mjSTATE_INTEGRATION, state["integration"].numpy()
    mujoco.mj_setState(model, data, integration, spec)
    mujoco.mj_forward(model, data)
    mujoco.mj_setState(model, data, integration, spec)  # mj_forward moved the solver's warm start: set it back


def plain_attributes(obj, data=None) -> dict:
    """Copies of an object's attributes that are plain values (None, bool, int, float, str, NumPy scalars and arrays),
    in a form a checkpoint holds: what a simulator wrapper keeps between steps outside the simulator. An array that
    is a view into the MjData `data` (MetaWorld keeps some positions that way, and they move with the simulation) is
    saved as where it points, so that it is a view again after a restore."""
    fields = {name: getattr(data, name) for name in dir(data) if not name.startswith("_")} if data is not None else {}
    fields = {name: value for name, value in fields.items() if isinstance(value, np.ndarray) and value.size}
    saved = {"arrays": {}, "numpy_scalars": {}, "python": {}, "views": {}}
    for name, value in vars(obj).items():
        if isinstance(value, np.ndarray) and value.dtype != object:
            views = (f for f, array in fields.items() if np.shares_memory(value, array))
            field = next(views, None) if value.flags.c_contiguous else None
            if field is None:
                saved["arrays"][name] = torch.from_numpy(value.copy())
            else:  # the offset, in elements, of a contiguous view into data.<field>
                offset = value.__array_interface__["data"][0] - fields[field].__array_interface__["data"][0]
                saved["views"][name] = (field, offset // value.itemsize, list(value.shape))
        elif isinstance(value, np.generic):
            saved["numpy_scalars"][name] = torch.from_numpy(np.asarray(value).copy())
        elif value is None or isinstance(value, (bool, int, float, str)):
            saved["python"][name] = value
    return saved


def set_plain_attributes(obj, saved: dict, data=None):
    """Set the attributes plain_attributes saved, with their types (arrays, views into `data`, NumPy scalars,
    Python values)."""
    for name, value in saved["arrays"].items():
        setattr(obj, name, value.numpy().copy())
    for name, (field, offset, shape) in saved["views"].items():
        setattr(obj, name, getattr(data, field).reshape(-1)[offset : offset + math.prod(shape)].reshape(shape))
    for name, value in saved["numpy_scalars"].items():
        setattr(obj, name, value.numpy()[()])
    for name, value in saved["python"].items():
        setattr(obj, name, value)
