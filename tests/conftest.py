import os
import sys

import pytest

# `pytest -n 2` runs two workers on a 2-core machine: one thread each, or their OpenMP threads fight over the
# cores and everything slows down several-fold. Set before torch is imported, so subprocesses inherit it too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

# Make `import bro_mt` (and the other top-level scripts) work from the tests.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _in_a_temporary_folder(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder: runs/ and checkpoints never land in the checkout."""
    monkeypatch.chdir(tmp_path)
