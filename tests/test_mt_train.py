"""End-to-end tests of bro_mt.py's training loop: smoke run, exact resume, signals, NaN stop, clear errors, learning."""

import dataclasses
import glob
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import bro_mt
from brc_utils import envs as brc_envs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    env_ids=["DMC_TINY"],
    critic_width=32,
    batch_size=32,
    learning_starts=50,
    eval_interval=150,
    eval_episodes=1,
    log_interval=50,
    max_episode_steps=60,
    buffer_size=1000,
)


def run(**overrides) -> str:
    return bro_mt.main(bro_mt.Args(**{**TINY, **overrides}))


def scalars(run_dir: str) -> dict:
    events = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_smoke_two_tasks_of_different_sizes_learns_and_writes_everything(capsys):
    path = run(total_timesteps=300, save_every=100, learning_starts=60)
    out = capsys.readouterr().out
    assert f"checkpoint saved at step 100: {path} (" in out and f"checkpoint saved at step 300: {path} (" in out
    assert "step 50/300 | " in out and "no updates yet; ETA once they run" in out  # random actions until step 60
    assert "step 100/300 | " in out and " | ETA 0h00m | critic " in out
    # The run ends with a summary: the last evaluation, where everything is, and how to go on.
    summary = out[out.index("summary of ") :]
    run_dir = os.path.dirname(path)
    assert "last evaluation @ 300: mean_return " in summary and f"checkpoint:  {path} (" in summary
    assert f"run folder:  {run_dir}/  (TensorBoard: tensorboard --logdir runs)" in summary
    assert f"continue:    python bro_mt.py --resume {run_dir} --total-timesteps 600" in summary
    ckpt = torch.load(path, weights_only=True)
    # cartpole-balance has obs 5 / action 1, point_mass-easy obs 4 / action 2: padded to 5 and 2.
    assert ckpt["critic"]["task_embedding.weight"].shape == (2, 32)
    assert ckpt["config"]["obs_dim"] == 5 and ckpt["config"]["action_dim"] == 2
    assert ckpt["actor"]["mean.weight"].shape == (1, 256, 2)
    # Every step from the one that stores the 60th (learning_starts) transition ran updates_per_step AdamW steps.
    assert ckpt["critic_optimizer"]["state"][0]["step"].item() == 2 * (300 - 60 + 1)
    fresh = bro_mt.Critic(5, 2, 2, 32)
    assert not torch.equal(fresh.state_dict()["trunk.linear.weight"], ckpt["critic"]["trunk.linear.weight"])

    logged = scalars(os.path.dirname(path))
    for task in ["cartpole-balance", "point_mass-easy"]:
        assert len(logged[f"eval/return/{task}"]) == 2  # steps 150 and 300
        assert len(logged[f"charts/episodic_return/{task}"]) == 300 // 60
        assert all(np.isfinite(logged[f"charts/reward_scale/{task}"]))
    for tag in [
        "losses/critic_loss",
        "losses/actor_loss",
        "losses/alpha_loss",
        "charts/entropy",
        "charts/alpha",
        "charts/q_mean",
        "charts/SPS",
        "charts/updates_per_second",
    ]:
        assert len(logged[tag]) >= 4 and np.isfinite(logged[tag]).all(), tag
    # The temperature moved from its initial 0.1: the alpha update ran.
    assert abs(logged["charts/alpha"][-1] - 0.1) > 1e-3


def test_resume_matches_uninterrupted_run():
    full = torch.load(run(total_timesteps=200, save_buffer=True), weights_only=True)
    half = run(total_timesteps=110, save_buffer=True)
    resumed = torch.load(run(total_timesteps=200, save_buffer=True, resume=half), weights_only=True)
    assert resumed["global_step"] == full["global_step"] == 200
    for key in ["actor", "critic", "target_critic"]:
        for name, value in full[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0, msg=f"{key}.{name}")
    assert torch.equal(resumed["log_alpha"], full["log_alpha"])
    torch.testing.assert_close(resumed["normalizer"]["max_return"], full["normalizer"]["max_return"])
    torch.testing.assert_close(resumed["obs"], full["obs"], rtol=0, atol=0)


def test_resume_without_buffer_refills_before_updating(capsys):
    half = run(total_timesteps=100)
    assert torch.load(half, weights_only=True)["replay_buffer"] is None
    resumed = torch.load(run(total_timesteps=200, resume=half), weights_only=True)
    assert "holds no replay buffer" in capsys.readouterr().out
    # Updates at steps 50..100 before the stop, then 150..200 after refilling 50 transitions: 51 steps each.
    assert resumed["critic_optimizer"]["state"][0]["step"].item() == 2 * (51 + 51)


def test_sigterm_saves_a_checkpoint_that_resumes(tmp_path):
    cmd = [
        sys.executable,
        os.path.join(REPO, "bro_mt.py"),
        "--env-ids",
        "cartpole-balance",
        "point_mass-easy",
        "--critic-width",
        "32",
        "--batch-size",
        "32",
        "--learning-starts",
        "50",
        "--log-interval",
        "20",
        "--total-timesteps",
        "100000",
        "--buffer-size",
        "100000",
        "--eval-interval",
        "100000",
        "--save-buffer",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 100/"):
            proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, "".join(lines)
    stop_line = next(line for line in lines if line.startswith("stopped at step"))
    path = glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))[0]
    ckpt = torch.load(path, weights_only=True)
    assert f"stopped at step {ckpt['global_step']:,}" in stop_line and ckpt["global_step"] >= 100
    assert ckpt["replay_buffer"]["size"] == ckpt["global_step"]
    resumed = bro_mt.main(
        bro_mt.Args(
            env_ids=["cartpole-balance", "point_mass-easy"],
            critic_width=32,
            batch_size=32,
            learning_starts=50,
            buffer_size=100000,
            eval_episodes=1,
            total_timesteps=ckpt["global_step"] + 10,
            resume=path,
        )
    )
    assert torch.load(resumed, weights_only=True)["global_step"] == ckpt["global_step"] + 10


def test_nan_loss_stops_with_the_step_and_saves(monkeypatch):
    real_critic_loss, calls = bro_mt.critic_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss, q = real_critic_loss(*args, **kwargs)
        return (loss * float("nan"), q) if len(calls) > 20 else (loss, q)

    monkeypatch.setattr(bro_mt, "critic_loss", poisoned)
    # two updates a step from step 50 (learning_starts): the 21st is the first of step 60
    with pytest.raises(SystemExit, match="non-finite loss at step 60 ") as error:
        run(total_timesteps=300)
    saved = glob.glob("runs/*/nan_step60.pt")
    assert saved and str(saved[0]).split("runs/")[1] in str(error.value)
    assert torch.load(saved[0], weights_only=True)["global_step"] == 60


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(env_ids=["dog-fly"]), "unknown task id.*dog-fly.*DMC_DOGS"),
        (dict(env_ids=["cartpole-balance", "DMC_TINY"]), "names a task twice"),
        (dict(model_size="3M", critic_width=None), "unknown --model-size .3M.; choose one of 1M, 4M"),
        (
            dict(env_ids=["cartpole-balance"], model_size="1B", critic_width=None, batch_size=1024),
            "smaller --model-size",
        ),
        (  # (the ring holds at most --total-timesteps transitions: a run that long)
            dict(buffer_size=10**12, total_timesteps=10**12),
            r"replay buffer \(2 tasks x 1,000,000,000,000 transitions\) needs .* GiB",
        ),
        (dict(resume="missing.pt"), "no such file"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(overrides, message):
    with pytest.raises(SystemExit, match=message):
        run(**{"total_timesteps": 10, **overrides})


def test_corrupt_or_mismatched_checkpoint_is_refused():
    path = run(total_timesteps=60)
    pattern = r"--env-ids cartpole-balance \(the checkpoint's run used --env-ids DMC_TINY\)"
    with pytest.raises(SystemExit, match=pattern):
        run(env_ids=["cartpole-balance"], resume=path)
    with pytest.raises(SystemExit, match=r"--critic-width 64 \(the checkpoint's run used --critic-width 32\)"):
        run(critic_width=64, resume=path)
    with pytest.raises(SystemExit, match=r"--gamma 0.9 \(the checkpoint's run used --gamma 0.99\).*Leave them out"):
        run(gamma=0.9, resume=path)  # not a size, but it changes what the saved reward statistics mean
    with open(path, "rb") as f:
        data = f.read()
    with open("truncated.pt", "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="truncated or corrupt"):
        run(resume="truncated.pt")
    torch.save({"weights": torch.zeros(3)}, "other.pt")
    with pytest.raises(SystemExit, match="not a bro_mt checkpoint"):
        run(resume="other.pt")


def test_resume_takes_the_runs_own_flags_from_the_checkpoint(capsys):
    """`--resume PATH` alone continues the run as it was trained (not with the 64M default critic); flags that only
    change how the run goes on (here its length) may be given."""
    path = run(total_timesteps=60, seed=3)
    resumed = bro_mt.main(bro_mt.Args(resume=path, total_timesteps=80))
    out = capsys.readouterr().out
    restored = next(line for line in out.splitlines() if line.startswith("flags from the checkpoint: "))
    for flag in ["--env-ids DMC_TINY", "--critic-width 32", "--batch-size 32", "--max-episode-steps 60", "--seed 3"]:
        assert f" {flag} " in restored + " ", (flag, restored)
    assert "--total-timesteps" not in restored and "resumed " in out and "at step 60" in out
    ckpt = torch.load(resumed, weights_only=True)
    assert ckpt["global_step"] == 80 and ckpt["config"]["critic_width"] == 32 and ckpt["args"]["seed"] == 3
    assert resumed == path  # the same run, continued


def test_the_start_up_lines_connect_the_preset_name_to_the_parameter_counts(capsys):
    """A preset's name (1M) beside the ensemble's count (2.4M) needs the words between them (issue #25, item 9)."""
    bro_mt.main(bro_mt.Args(env_ids=["cartpole-balance"], model_size="1M", total_timesteps=2, learning_starts=5))
    out = capsys.readouterr().out
    assert "critic width 512 (--model-size 1M, named for ~4W^2 = 1M hidden weights per member): " in out, out
    assert "parameters per member" in out and "for the ensemble of 2" in out


def test_help_documents_every_flag():
    out = subprocess.run(
        [sys.executable, os.path.join(REPO, "bro_mt.py"), "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        check=True,
    ).stdout
    for f in dataclasses.fields(bro_mt.Args):
        flag = "--" + f.name.replace("_", "-")
        assert flag in out, flag
    assert "deterministic evaluation episodes per task" in out and "1M" in out and "1B" in out
    assert "if toggled" not in out and "(default: 1024" not in out  # no wrong or second default
    # --help's example is the README's laptop command, word for word (it evaluates every 5000 steps)
    readme = open(os.path.join(REPO, "README.md")).read()
    command = next(line for line in readme.splitlines() if line.startswith("python bro_mt.py --env-ids DMC_TINY"))
    example = out[out.index("python bro_mt.py --env-ids DMC_TINY") :].split("\n\n")[0]
    assert " ".join(example.replace("\\", " ").split()) == command
    assert "A small run on a laptop CPU (~20 minutes" in out
    assert out.index("--env-ids") < out.index("--critic-loss") < out.index("--seed")  # algorithm, ablations, running
    source = open(os.path.join(REPO, "bro_mt.py")).read()
    helps = [l for l in source[: source.index("class Args(")].splitlines() if l.startswith('    """')]
    run_source = open(os.path.join(REPO, "brc_utils", "run.py")).read()
    run_args = run_source[run_source.index("class RunArgs:") : run_source.index("RUN_FLAG_RANGES =")]
    helps += [line for line in run_args.splitlines() if line.startswith('    """')][1:]  # [1:]: the class docstring
    assert len(helps) == len(dataclasses.fields(bro_mt.Args))
    assert all(line.rstrip().endswith('"""') for line in helps), "a flag's help has a line break (wraps mid-phrase)"
    bad = subprocess.run(
        [sys.executable, os.path.join(REPO, "bro_mt.py"), "--model-size", "3M"], capture_output=True, text=True
    )
    assert bad.returncode != 0 and "3M" in bad.stderr and "64M" in bad.stderr


def test_capture_video_writes_one_mp4_per_task():
    try:
        brc_envs.DMCEnv("cartpole-balance", 0).render(size=16)
    except Exception as error:
        pytest.skip(f"MuJoCo cannot render on this machine: {error}")
    path = run(total_timesteps=60, eval_interval=60, capture_video=True, learning_starts=100, max_episode_steps=20)
    videos = sorted(
        os.path.basename(v) for v in glob.glob(os.path.join(os.path.dirname(path), "videos", "step60", "*"))
    )
    assert videos == ["cartpole-balance.mp4", "point_mass-easy.mp4"]


def test_learns_cartpole_balance_on_cpu():
    """A width-64 critic clearly beats the random policy on cartpole-balance within 10k steps (~2-4 CPU minutes).

    Random actions score ~330 (5 episodes: 331 +- 17); the untrained deterministic policy ~145 (checked with
    learning rate 0). With the paper's tau = 0.005 and lr 3e-4 a critic this small needs far longer (eval ~600 after
    10k steps), so this test uses a faster target (tau 0.05) and lr 1e-3. Learning that fast oscillates, so no single
    evaluation is reliable: evaluations at 4k/6k/8k/10k steps were 945/358/428/529, 478/470/780/987 and
    769/866/919/916 for seeds 1-3 (torch 2.13 CPU, December 2026 code); an earlier version of the loop, one update
    step apart, gave 701/618/320 at 6k/8k/10k for one seed. The test asks that the best evaluation from 4k on is
    above 600 and that their mean beats the random policy.
    """
    start = time.time()
    path = run(
        env_ids=["cartpole-balance"],
        critic_width=64,
        batch_size=64,
        updates_per_step=1,
        tau=0.05,
        learning_rate=1e-3,
        total_timesteps=10_000,
        learning_starts=500,
        eval_interval=2000,
        eval_episodes=2,
        log_interval=2000,
        buffer_size=20_000,
        max_episode_steps=None,
    )
    evals = scalars(os.path.dirname(path))["eval/return/cartpole-balance"]
    message = f"evals {evals} at 2k..10k steps ({time.time() - start:.0f} s)"
    assert len(evals) == 5 and max(evals[1:]) > 600 and sum(evals[1:]) / 4 > 330, message
