"""Every numeric flag of both scripts is checked at start-up, before anything heavy: a bad value stops the run with
one clear line that names the flag, the value and the valid range (no traceback)."""

import ctypes.util
import dataclasses
import math
import os
import subprocess
import sys
import typing

import numpy as np
import pytest

import bro_atari
import bro_mt
from brc_utils import envs as brc_envs
from brc_utils import run as run_utils

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"bro_mt": bro_mt, "bro_atari": bro_atari}
NUMERIC = (int, float, typing.Optional[int], typing.Optional[float])


def ranges(script) -> dict:
    return script.FLAG_RANGES | run_utils.RUN_FLAG_RANGES  # the script's own, then the run flags' (RunArgs)


def numeric_flags(script) -> list[str]:
    hints = typing.get_type_hints(script.Args)
    return [f.name for f in dataclasses.fields(script.Args) if hints[f.name] in NUMERIC]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_has_a_range(name):
    script = SCRIPTS[name]
    assert set(numeric_flags(script)) == set(ranges(script)), "add the new flag's valid values to FLAG_RANGES"
    script.check_args(script.Args())  # the defaults are valid


CASES = [(name, flag, value) for name, script in SCRIPTS.items() for flag in numeric_flags(script)
         for value in ranges(script)[flag].just_outside()]  # fmt: skip


@pytest.mark.parametrize("name, flag, value", CASES, ids=[f"{n}-{f}-{v}" for n, f, v in CASES])
def test_a_bad_value_is_refused_naming_the_flag_and_the_range(name, flag, value):
    script = SCRIPTS[name]
    if isinstance(script.Args.__dataclass_fields__[flag].default, int) and not math.isnan(value):
        value = int(value)
    with pytest.raises(SystemExit) as stop:
        script.check_args(dataclasses.replace(script.Args(), **{flag: value}))
    message = str(stop.value)
    assert f"{run_utils.as_flag(flag, value)}: must be {ranges(script)[flag]}" in message, message


@pytest.mark.parametrize("name", SCRIPTS)
def test_flags_that_only_make_sense_together(name):
    script = SCRIPTS[name]
    with pytest.raises(SystemExit, match="--v-min 0.0 and --v-max 0.0: need v-min < v-max"):
        script.check_args(script.Args(v_min=0.0, v_max=0.0))
    with pytest.raises(
        SystemExit, match=r"--gamma 1.0: must be in \[0, 1\)\n  --seed -1: must be in \[0, 2147483647\]"
    ):
        script.check_args(script.Args(gamma=1.0, seed=-1))  # every bad flag, one line each


@pytest.mark.parametrize("name", SCRIPTS)
def test_the_run_flags_that_are_not_numbers(name):
    """--resume "" would silently start a new run; --exp-name names a folder, so it must not be a path."""
    script = SCRIPTS[name]
    for resume in ("", "  "):
        with pytest.raises(SystemExit, match=f"--resume '{resume}': an empty path; give a checkpoint or a run folder"):
            script.check_args(script.Args(resume=resume))
    for exp_name in ("a/b", "../../x", "x" * 101, "", "tab\there"):
        with pytest.raises(SystemExit, match=r"--exp-name .*: use letters, digits and \. _ - \+ only, at most 100"):
            script.check_args(script.Args(exp_name=exp_name))
    script.check_args(script.Args(exp_name="dogs_v2.1-lr3e-4+wd", save_minutes=math.inf))  # inf: never


def test_the_largest_seed_survives_the_scripts_seed_arithmetic():
    """--seed 4294967295 passed the range check, then env seeds (seed + 10_000 + task) overflowed NumPy's 2**32."""
    with pytest.raises(SystemExit, match=r"--seed 4294967295: must be in \[0, 2147483647\]"):
        bro_mt.check_args(bro_mt.Args(seed=2**32 - 1))
    seed = int(run_utils.RUN_FLAG_RANGES["seed"].high)
    env = brc_envs.DMCEnv("cartpole-balance", seed + 10_000 + 63, max_episode_steps=5)  # the 64th task's env
    env.reset(seed=seed + 10**9 + 1000 * 63)  # an evaluation at step 1e9 of the 64th task
    np.random.default_rng(seed + 10**9)


def test_freeze_trunk_needs_init_from():
    with pytest.raises(SystemExit, match="--freeze-trunk keeps a pretrained trunk fixed: use it with --init-from"):
        bro_mt.check_args(bro_mt.Args(freeze_trunk=True))


@pytest.mark.parametrize("script, flags", [("bro_mt.py", ["--tau", "-1"]), ("bro_atari.py", ["--num-bins", "1"])])
def test_the_command_line_gets_a_message_not_a_traceback(script, flags):
    done = subprocess.run([sys.executable, os.path.join(REPO, script), *flags], capture_output=True, text=True)
    assert done.returncode != 0 and "invalid flags:" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert " ".join(flags) in done.stderr


# ---- The machine, not the flags ----
@pytest.mark.parametrize("renderer", ["nonsense", "osmesa"])
def test_an_unusable_mujoco_renderer_gets_a_message_not_a_traceback(renderer):
    if renderer == "osmesa" and ctypes.util.find_library("OSMesa"):
        pytest.skip("OSMesa is installed here: MUJOCO_GL=osmesa works")
    env = {**os.environ, "MUJOCO_GL": renderer}
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "bro_mt.py"), "--help"], capture_output=True, text=True, env=env
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr, done.stderr
    assert f"MuJoCo cannot start with MUJOCO_GL='{renderer}'" in done.stderr and "MUJOCO_GL=egl" in done.stderr


def test_a_folder_that_cannot_be_written_is_named_before_anything_heavy(monkeypatch):
    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(run_utils.os, "makedirs", refuse)
    with pytest.raises(
        SystemExit, match=r"cannot create the run folder runs/.* \(Permission denied\); start the run from"
    ):
        bro_mt.main(bro_mt.Args(env_ids=["cartpole-balance"], critic_width=16, total_timesteps=10))
