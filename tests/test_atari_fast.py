"""Tests of bro_atari.py's opt-in fast paths: --compile, --cudagraphs and --bf16 give the eager update's numbers
(within tolerances measured on this project's 2-core CPU VM, torch 2.13), --async-envs steps the games exactly as the
serial loop does and resumes exactly, and the FLOP formula of benchmarks/bench_atari.py equals torch's count.

torch.compile needs 50-90 s to compile the update on a small CPU, so only one test compiles, once."""

import glob
import importlib.util
import os
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
import torch
import tyro

from bro_atari import Args, Batch, QNetwork, critic_loss, main, update
from brc_utils.atari import AtariGame, GameEnv
from brc_utils.run import fast_update
from ctrl_c import press_ctrl_c_during
from test_atari import PixelGame, one_thread, tiny_args  # noqa: F401 (one_thread is a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAMES, ACTIONS, WIDTH, ENCODER_WIDTH, BATCH = 2, 4, 32, 2, 8  # tiny: the numbers matter here, not the speed


def learner(device="cpu", bf16=False, capturable=False):
    """The same online network, target and AdamW on every call (seeded), as bro_atari.main builds them."""
    torch.manual_seed(0)
    q_network = QNetwork(GAMES, ACTIONS, WIDTH, ENCODER_WIDTH, bf16=bf16).to(device)
    target_network = QNetwork(GAMES, ACTIONS, WIDTH, ENCODER_WIDTH, bf16=bf16).to(device)
    target_network.load_state_dict(q_network.state_dict())
    target_network.requires_grad_(False)
    optimizer = torch.optim.AdamW(q_network.parameters(), lr=3e-4, weight_decay=1e-4, fused=True, capturable=capturable)
    return q_network, target_network, optimizer


def random_batches(count, device="cpu", seed=1):
    """Replay-like batches: uint8 stacks, actions, n-step returns, bootstrap factors (some 0: terminations)."""
    g = torch.Generator().manual_seed(seed)

    def stacks():
        return torch.randint(0, 256, (BATCH, 4, 84, 84), dtype=torch.uint8, generator=g)

    batches = [
        Batch(
            stacks(),
            torch.randint(ACTIONS, (BATCH,), generator=g),
            torch.randn(BATCH, generator=g),
            0.99**3 * (torch.rand(BATCH, generator=g) > 0.2),
            stacks(),
            torch.randint(GAMES, (BATCH,), generator=g),
        )
        for _ in range(count)
    ]
    return [Batch(*(x.to(device) for x in batch)) for batch in batches]


def run_updates(batches, device="cpu", compile=False, cudagraphs=False, bf16=False):
    """The training loop's update_step for the given flags on `batches`: per-update metrics and the final weights."""
    q_network, target_network, optimizer = learner(device, bf16, capturable=cudagraphs)
    support = torch.linspace(-10, 10, 101, device=device)
    update_step = fast_update(
        lambda batch: update(batch, q_network, target_network, optimizer, support, 0.005), compile, cudagraphs
    )
    metrics = torch.stack([update_step(batch) for batch in batches]).cpu()
    weights = {f"q.{k}": v.detach().cpu().clone() for k, v in q_network.state_dict().items()}
    weights |= {f"target.{k}": v.detach().cpu().clone() for k, v in target_network.state_dict().items()}
    return metrics, weights


def assert_same_updates(got, expected, rtol, atol):
    (metrics, weights), (expected_metrics, expected_weights) = got, expected
    torch.testing.assert_close(metrics, expected_metrics, rtol=rtol, atol=atol)
    for name, value in expected_weights.items():
        torch.testing.assert_close(weights[name], value, rtol=rtol, atol=atol, msg=name)


def test_compiled_update_matches_eager(one_thread):
    """--compile vs eager, five updates from identical networks, optimiser and batches. Measured here: losses and
    mean Q within 5e-7 (absolute), every weight of the online and the target network within 7e-7; the tolerance
    (rtol 1e-4, atol 1e-5) leaves ~15x room for other CPUs' kernels."""
    batches = random_batches(5)
    eager = run_updates(batches)
    compiled = run_updates(batches, compile=True)
    assert_same_updates(compiled, eager, rtol=1e-4, atol=1e-5)
    assert not torch.equal(eager[1]["q.head.weight"], learner()[0].head.weight.detach())  # the updates did change it


def test_bf16_update_stays_close_to_float32():
    """--bf16 vs float32, eager. Measured over four seeds here: logits within 2.5e-2 (absolute, logits ~2), losses of
    five updates within 2e-3 (relative), mean Q within 5.5e-3, gradient cosine similarity >= 0.975. Tolerances: 4-5x
    those. bf16 must also really be in use (logits differ by more than 1e-3) and hand float32 to the loss."""
    batch = random_batches(1)[0]
    support = torch.linspace(-10, 10, 101)
    logits, gradients = {}, {}
    for bf16 in (False, True):
        q_network, target_network, _ = learner(bf16=bf16)
        with torch.no_grad():
            logits[bf16] = q_network(batch.obs, batch.game_ids)
        critic_loss(q_network, target_network, batch, support)[0].backward()
        gradients[bf16] = torch.cat([p.grad.flatten() for p in q_network.parameters()])
    assert logits[True].dtype == torch.float32
    deviation = (logits[True] - logits[False]).abs().max().item()
    assert 1e-3 < deviation < 0.1, deviation
    assert torch.nn.functional.cosine_similarity(gradients[True], gradients[False], 0) > 0.9

    batches = random_batches(5)
    (metrics, _), (expected, _) = run_updates(batches, bf16=True), run_updates(batches)
    torch.testing.assert_close(metrics[:, 0], expected[:, 0], rtol=1e-2, atol=0)  # losses
    torch.testing.assert_close(metrics[:, 1], expected[:, 1], rtol=0, atol=3e-2)  # mean Q


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
def test_cuda_graphs_match_eager_on_cuda():
    """--cudagraphs and --compile --cudagraphs vs eager on the GPU, all with the optimiser's step count on the GPU
    (capturable), eight updates: three warm-up runs, the recording, and replays. TF32 is switched off so that all
    three compute in float32. Not measured yet (no GPU in the session that wrote it): the tolerance is 10x the CPU
    compile test's."""
    allow_tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        batches = random_batches(8, "cuda")
        q_network, target_network, optimizer = learner("cuda", capturable=True)
        support = torch.linspace(-10, 10, 101, device="cuda")
        eager = torch.stack([update(b, q_network, target_network, optimizer, support, 0.005) for b in batches]).cpu()
        eager = (
            eager,
            {
                **{f"q.{k}": v.cpu() for k, v in q_network.state_dict().items()},
                **{f"target.{k}": v.cpu() for k, v in target_network.state_dict().items()},
            },
        )
        assert_same_updates(run_updates(batches, "cuda", cudagraphs=True), eager, rtol=1e-3, atol=1e-4)
        assert_same_updates(run_updates(batches, "cuda", compile=True, cudagraphs=True), eager, rtol=1e-3, atol=1e-4)
    finally:
        torch.backends.cudnn.allow_tf32 = allow_tf32


def test_cudagraphs_without_cuda_is_a_clear_error():
    with pytest.raises(SystemExit, match="--cudagraphs records CUDA graphs and needs a CUDA GPU"):
        main(tiny_args(cudagraphs=True, cuda=False))


def test_help_lists_the_fast_path_flags(capsys):
    with pytest.raises(SystemExit):
        tyro.cli(Args, args=["--help"])
    out = capsys.readouterr().out
    for flag in ("--compile", "--cudagraphs", "--bf16", "--async-envs"):
        assert flag in out
    assert "lag one step behind" in " ".join(out.split())


# ---- --async-envs ----
def step_both(make_env, games, steps, num_actions, seed=0):
    """Step a serial and a worker-process vector env of GameEnv with the same random actions; return both runs'
    (frames, rewards, terminations, truncations, life_lost, final frames) and the workers' states at the half."""
    runs = []
    for vector_env in (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv):
        envs = vector_env(
            [partial(GameEnv, make_env, game, 10 + i) for i, game in enumerate(games)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        rng, records = np.random.default_rng(seed), []
        records.append(envs.reset()[0])
        for t in range(steps):
            if t == steps // 2:
                half_state, half_records = list(envs.get_attr("state")), len(records)
            frames, rewards, terminations, truncations, infos = envs.step(rng.integers(num_actions, size=len(games)))
            ended = terminations | truncations
            life_lost = [(infos["final_info"] if ended[i] else infos)["life_lost"][i] for i in range(len(games))]
            final = [infos["final_obs"][i] if ended[i] else None for i in range(len(games))]
            records.append((frames, rewards, terminations, truncations, life_lost, final))
        # The states from get_attr put the games back exactly: replay the second half and compare
        envs.set_attr("state", half_state)
        rng = np.random.default_rng(seed)
        for t in range(steps):
            actions = rng.integers(num_actions, size=len(games))
            if t >= steps // 2:
                frames = envs.step(actions)[0]
                np.testing.assert_array_equal(frames, records[half_records + t - steps // 2][0])
        envs.close()
        runs.append(records)
    return runs


def assert_same_records(serial, workers):
    np.testing.assert_array_equal(serial[0], workers[0])  # the first frames
    for a, b in zip(serial[1:], workers[1:]):
        for x, y in zip(a[:5], b[:5]):
            np.testing.assert_array_equal(x, y)
        for x, y in zip(a[5], b[5]):
            assert (x is None and y is None) or np.array_equal(x, y)


def test_async_envs_give_the_serial_transitions():
    """GameEnv in worker processes (--async-envs) returns exactly the serial vector env's frames, rewards, flags,
    life losses and final frames for the same actions, on ALE games (with truncations) and on the pixel game (life
    losses, terminations); and its checkpoint states restore the emulators exactly."""
    atari = partial(AtariGame, full_action_space=True, max_episode_frames=80)  # cut after <= 20 steps
    serial, workers = step_both(lambda game, seed: atari(game, seed), ["Pong", "Breakout"], 50, 18)
    assert_same_records(serial, workers)
    assert sum(r[3].sum() for r in serial[1:]) >= 4  # both games were cut twice or more: final frames compared

    serial, workers = step_both(
        lambda game, seed: PixelGame(game, seed, truncate_at=7 if game == "B" else 0), ["A", "B"], 40, 4
    )
    assert_same_records(serial, workers)
    assert sum(r[2].sum() for r in serial[1:]) >= 3 and sum(sum(r[4]) for r in serial[1:]) >= 6
    assert sum(r[3].sum() for r in serial[1:]) >= 4 and sum(r[1].sum() for r in serial[1:]) > 0


def test_async_envs_training_resumes_exactly(tmp_path, monkeypatch, one_thread):
    """With --async-envs the updates see the replay one step late, but a run stopped and resumed still equals the
    uninterrupted one: the checkpoint holds the emulators' states, fetched from the workers."""
    monkeypatch.chdir(tmp_path)
    full = torch.load(main(tiny_args(exp_name="full", save_buffer=True, async_envs=True)), weights_only=True)
    half = main(tiny_args(exp_name="half", total_timesteps=25, save_buffer=True, async_envs=True))
    resumed = torch.load(
        main(tiny_args(exp_name="half", resume=half, save_buffer=True, async_envs=True)), weights_only=True
    )
    assert resumed["global_step"] == full["global_step"] == 40
    for name, value in full["q_network"].items():
        torch.testing.assert_close(resumed["q_network"][name], value, rtol=0, atol=0)
    for saved, expected in zip(resumed["replay_buffer"]["data"], full["replay_buffer"]["data"]):
        torch.testing.assert_close(saved, expected, rtol=0, atol=0)
    serial = torch.load(main(tiny_args(exp_name="serial", save_buffer=True)), weights_only=True)
    assert not torch.equal(serial["q_network"]["head.weight"], full["q_network"]["head.weight"])  # the data lag


def test_ctrl_c_with_async_envs_saves_a_checkpoint(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, workers included: they must ignore it, so that the main
    process can finish its step, save and close them (instead of dying on a broken pipe)."""
    script = (
        "import bro_atari; bro_atari.main(bro_atari.Args(env_ids=['Pong', 'Breakout'], critic_width=32, "
        "encoder_width=2, batch_size=8, buffer_size=500, learning_starts=10, total_timesteps=100_000, "
        "log_interval=5, eval_interval=100_000, cuda=False, async_envs=True))"
    )
    returncode, output = press_ctrl_c_during(script, tmp_path, when="step 15/")  # updates are running
    assert returncode == 0 and "stopped at step" in output, output[-3000:]
    assert glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))


# ---- FLOPs of an update (benchmarks/bench_atari.py) ----
def test_update_flop_formula_equals_torchs_count():
    spec = importlib.util.spec_from_file_location("bench_atari", os.path.join(REPO, "benchmarks", "bench_atari.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for games, actions, width, encoder_width, batch_size in [(2, 4, 32, 2, 8), (1, 6, 48, 3, 5)]:
        assert bench.update_flops(batch_size, games, actions, width, encoder_width) == bench.counted_update_flops(
            batch_size, games, actions, width, encoder_width, torch.device("cpu")
        )
