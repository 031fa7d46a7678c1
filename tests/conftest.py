import os
import sys
import tempfile

import pytest

# `pytest -n 2` runs two workers on a 2-core machine: one thread each, or their OpenMP threads fight over the
# cores and everything slows down several-fold. Set before torch is imported, so subprocesses inherit it too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# torch.compile's on-disk cache does not key its kernels by ATEN_CPU_CAPABILITY: a run with the AVX2 kernels
# (ATEN_CPU_CAPABILITY=avx2, as tests/test_kernels.py and the README's check use) would load kernels compiled for
# AVX-512 by an earlier default run, and crash (a segfault, seen with torch 2.13). One cache per kernel set.
if os.environ.get("ATEN_CPU_CAPABILITY"):
    cache = f"torchinductor_{os.getuid()}_{os.environ['ATEN_CPU_CAPABILITY'].lower()}"
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), cache))

# Make `import bro_mt` (and the other top-level scripts) work from the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder: runs/ and checkpoints never land in the checkout."""
    monkeypatch.chdir(tmp_path)
