"""bro_mt.py's fast paths give the eager update's numbers: --compile (CPU here), --bf16 (within a measured
tolerance), --cudagraphs (CUDA only; skipped without a GPU), and --async-envs (bit-identical environments)."""

import copy
import glob
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import bro_mt
from brc_utils import envs as brc_envs
from brc_utils import run as run_utils
from ctrl_c import press_ctrl_c_during
from test_mt_train import run

OBS, ACT, TASKS, WIDTH, BATCH, UPDATES = 11, 3, 3, 32, 64, 4


def make_learner(device="cpu", bf16=False, capturable=False):
    """Networks, optimisers and the inputs of `bro_mt.update`, identical for every call (fixed seed)."""
    torch.manual_seed(0)
    critic = bro_mt.Critic(OBS, ACT, TASKS, WIDTH, bf16=bf16).to(device)
    target = copy.deepcopy(critic).requires_grad_(False)
    actor = bro_mt.Actor(OBS, ACT, critic.embedding_dim).to(device)
    log_alpha = torch.tensor(math.log(0.1), device=device, requires_grad=True)
    nets = bro_mt.Nets(
        critic,
        target,
        actor,
        log_alpha,
        *bro_mt.make_optimizers(critic, actor, log_alpha, 3e-4, 1e-4, 3e-4, capturable),
    )
    masks = torch.ones(TASKS, ACT, device=device)
    masks[0, 2] = 0  # task 0 has two action dims
    entropy = -masks.sum(-1) / 2
    support = torch.linspace(-10, 10, 101, device=device)
    scales = bro_mt.reward_scale(torch.tensor([5.0, 50.0, 500.0], device=device), 0.1, entropy, 0.99)

    def update_step(batch):
        return bro_mt.update(batch, nets, masks, entropy, scales, support, 0.99, 0.005)

    return update_step, (critic, target, actor, log_alpha)


def batches(device="cpu"):
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(UPDATES):
        tasks = torch.randint(TASKS, (BATCH,), generator=g)
        out.append(
            bro_mt.Batch(
                torch.randn(BATCH, OBS, generator=g),
                torch.rand(BATCH, ACT, generator=g) * 2 - 1,
                torch.randn(BATCH, generator=g) * 3,
                torch.randn(BATCH, OBS, generator=g),
                (torch.rand(BATCH, generator=g) < 0.1).float(),
                tasks,
            )
        )
    return [bro_mt.Batch(*(x.to(device) for x in b)) for b in out]


def train(update_step, learner, device="cpu"):
    """Run the updates with a fixed seed; return each update's metrics and the final parameters."""
    torch.manual_seed(2)
    metrics = torch.stack([update_step(b) for b in batches(device)]).cpu()
    critic, target, actor, log_alpha = learner
    params = [p.detach().cpu().clone() for m in (critic, target, actor) for p in m.parameters()]
    return metrics, params + [log_alpha.detach().cpu().clone()]


def assert_close_to_reference(result, reference, initial, metrics_rtol, drift):
    """Same metrics (critic, actor, temperature loss, entropy, Q) at every update, and parameters that differ from
    the reference's by at most `drift` times how far the reference moved them. A relative bound on the drift is the
    right measure: AdamW's first steps are ~lr * sign(gradient), so a gradient that rounds to the other sign moves a
    weight by 2 lr in the other direction however small the rounding difference."""
    torch.testing.assert_close(result[0], reference[0], rtol=metrics_rtol, atol=1e-6)
    diff = torch.cat([(a - b).flatten() for a, b in zip(result[1], reference[1])]).norm()
    moved = torch.cat([(a - b).flatten() for a, b in zip(reference[1], initial)]).norm()
    assert moved > 0 and diff <= drift * moved, f"parameter drift {diff / moved:.2e} of their movement"


@pytest.fixture(scope="module")
def eager_reference():
    update_step, learner = make_learner()
    initial = [p.detach().clone() for m in learner[:3] for p in m.parameters()] + [learner[3].detach().clone()]
    return train(update_step, learner), initial


def test_compile_matches_eager(eager_reference):
    """torch.compile'd updates (the --compile path, fast_update) track eager over several updates on CPU.

    Measured (torch 2.13 CPU): metrics agree to 4e-6 relative, parameter drift 1e-5 of their movement."""
    reference, initial = eager_reference
    update_step, learner = make_learner()
    compiled = train(run_utils.fast_update(update_step, compile=True, cudagraphs=False), learner)
    assert_close_to_reference(compiled, reference, initial, metrics_rtol=1e-4, drift=1e-3)


def test_bf16_critic_stays_close_to_float32(eager_reference):
    """--bf16 (the critic's matmuls in bfloat16, the rest float32) stays near the float32 update.

    Measured (torch 2.13 CPU autocast): metrics within 1.1e-2 relative, parameter drift 6% of their movement;
    the bounds below are about four times that. bfloat16 keeps ~3 significant digits, so the results must differ."""
    reference, initial = eager_reference
    update_step, learner = make_learner(bf16=True)
    result = train(update_step, learner)
    assert not torch.equal(result[0], reference[0])  # the flag did something
    assert_close_to_reference(result, reference, initial, metrics_rtol=5e-2, drift=0.25)
    assert learner[0](torch.zeros(2, OBS), torch.zeros(2, ACT), torch.zeros(2, dtype=torch.long)).dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
@pytest.mark.parametrize("compile, bf16", [(False, False), (True, False), (True, True)])
def test_cudagraphs_match_eager_on_gpu(compile, bf16):
    """--cudagraphs (with and without --compile, and with --bf16) against the eager float32 update on the GPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    update_step, learner = make_learner("cuda")
    initial = [p.detach().cpu().clone() for m in learner[:3] for p in m.parameters()] + [learner[3].detach().cpu()]
    reference = train(update_step, learner, "cuda")
    update_step, learner = make_learner("cuda", bf16=bf16, capturable=True)
    fast = run_utils.fast_update(update_step, compile=compile, cudagraphs=True)
    fast.warmup = 1  # so that most of the compared updates are graph replays
    result = train(fast, learner, "cuda")
    assert fast.graph is not None
    assert_close_to_reference(
        result, reference, initial, metrics_rtol=5e-2 if bf16 else 1e-4, drift=0.25 if bf16 else 1e-2
    )


def test_main_wires_the_flags(monkeypatch):
    """--compile hands main's update to torch.compile (spied here: the real compile is tested above);
    --cudagraphs refuses a machine without CUDA; --bf16 trains."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    ckpt = torch.load(run(total_timesteps=60, compile=True, bf16=True), weights_only=True)
    # updates run from the step that stores the 50th (learning_starts) transition to the 60th: 11 steps x 2
    assert len(compiled) == 1 and ckpt["critic_optimizer"]["state"][0]["step"].item() == 2 * 11
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--cudagraphs .* needs a CUDA GPU"):
            run(total_timesteps=60, cudagraphs=True)


def test_async_envs_step_exactly_like_serial_ones():
    """Worker processes (AsyncVectorEnv) and the in-process loop (SyncVectorEnv) give bit-identical transitions,
    final observations at episode ends, and states."""
    fns = [
        lambda i=i, env_id=env_id: brc_envs.DMCEnv(env_id, i, 7, (5, 2))
        for i, env_id in enumerate(["cartpole-balance", "point_mass-easy"])
    ]
    serial = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    workers = gym.vector.AsyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    try:
        np.testing.assert_array_equal(serial.reset()[0], workers.reset()[0])
        rng, ends = np.random.default_rng(0), 0
        for _ in range(16):
            actions = rng.uniform(-1, 1, (2, 2)).astype(np.float32)
            a, b = serial.step(actions), workers.step(actions)
            for x, y in zip(a[:4], b[:4]):
                np.testing.assert_array_equal(x, y)
            if a[3].any():  # the time limit of 7 steps
                ends += 1
                for i in np.flatnonzero(a[3]):
                    np.testing.assert_array_equal(a[4]["final_obs"][i], b[4]["final_obs"][i])
        assert ends == 2
        for x, y in zip(serial.get_attr("state"), workers.get_attr("state")):
            torch.testing.assert_close(x["physics"], y["physics"], rtol=0, atol=0)
    finally:
        serial.close()
        workers.close()


def test_async_envs_run_learns_and_resumes_exactly():
    full = torch.load(run(total_timesteps=120, save_buffer=True, async_envs=True), weights_only=True)
    half = run(total_timesteps=80, save_buffer=True, async_envs=True)
    resumed = torch.load(run(total_timesteps=120, save_buffer=True, async_envs=True, resume=half), weights_only=True)
    # Updates run during steps 50..119, each on the transitions stored before it (the serial loop, which updates
    # after each store, runs them at steps 50..120).
    assert full["critic_optimizer"]["state"][0]["step"].item() == 2 * (120 - 50)
    for key in ["actor", "critic"]:
        for name, value in full[key].items():
            torch.testing.assert_close(resumed[key][name], value, rtol=0, atol=0, msg=f"{key}.{name}")
    torch.testing.assert_close(resumed["obs"], full["obs"], rtol=0, atol=0)


def test_ctrl_c_with_async_envs_saves_a_checkpoint(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, workers included: they must ignore it, so that the main
    process finishes its step, saves and closes them (instead of dying on a broken pipe)."""
    script = (
        "import bro_mt; bro_mt.main(bro_mt.Args(env_ids=['DMC_TINY'], critic_width=32, batch_size=32, "
        "learning_starts=20, total_timesteps=100_000, buffer_size=1000, log_interval=10, eval_interval=100_000, "
        "async_envs=True))"
    )
    returncode, output = press_ctrl_c_during(script, tmp_path, when="step 40/")  # updates are running
    assert returncode == 0 and "stopped at step" in output, output[-3000:]
    ckpt = torch.load(glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))[0], weights_only=True)
    assert ckpt["global_step"] >= 40 and len(ckpt["envs"]) == 2
