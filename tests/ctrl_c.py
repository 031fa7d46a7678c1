"""Shared by the --async-envs tests of both scripts: run a training script and press Ctrl-C as a terminal does."""

import os
import signal
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def press_ctrl_c_during(script: str, cwd, when: str) -> tuple[int, str]:
    """Run `python -c script` in its own process group; once a line starts with `when`, send SIGINT to the whole
    group (worker processes included, as a terminal's Ctrl-C does). Returns the exit code and the output."""
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-u", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if line.startswith(when):
                os.killpg(process.pid, signal.SIGINT)
                break
        output = "".join(lines) + process.communicate(timeout=120)[0]
    finally:
        process.kill()
    return process.returncode, output
