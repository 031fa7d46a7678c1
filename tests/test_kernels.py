"""The learning tests must pass on every CPU, not only this one. torch picks its matmul kernels by instruction set
(AVX2 or AVX-512), so float rounding, and with it a learning trajectory, differs from machine to machine. Each
learning test runs in the suite with this machine's default kernels; here it runs again, in a fresh process, with
the AVX2 kernels that every x86-64 CPU this project supports has (ATEN_CPU_CAPABILITY=avx2). On a machine whose
default is AVX2 already the suite's own run covers it."""

import os
import subprocess
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEARNING_TESTS = [
    "tests/test_atari.py::test_learns_a_pixel_game_with_two_game_embeddings",
    "tests/test_mt_train.py::test_learns_cartpole_balance_on_cpu",
]


@pytest.mark.parametrize("test", LEARNING_TESTS)
def test_learning_tests_pass_with_avx2_kernels(test):
    default = torch.backends.cpu.get_cpu_capability()
    if default in ("AVX2", "DEFAULT", "NO AVX"):
        pytest.skip(f"this CPU's default kernels are {default}: the suite's own run is the AVX2 (or plainer) one")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", test]
    check = "import torch; print(torch.backends.cpu.get_cpu_capability())"
    kernels = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True).stdout.strip()
    assert kernels == "AVX2", f"ATEN_CPU_CAPABILITY=avx2 gave {kernels!r} kernels"
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
