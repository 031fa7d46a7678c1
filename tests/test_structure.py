"""The code's shape: what the two scripts share stays identical, the formatting stays ruff's, and bro_mt.py keeps
reading top to bottom as the algorithm (the plumbing lives in run_utils.py). Cheap: the scripts are parsed, not run,
except for one small critic whose printout is checked."""

import ast
import difflib
import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Written once in bro_mt.py and copied into bro_atari.py (each script stands alone): the copies must not drift.
SHARED = ["EnsembleLinear", "EnsembleLayerNorm", "BroNetBlock", "BroNet", "categorical_projection", "returns_to_go"]
SHARED += ["RewardNormalizer", "make_task_embedding"]


def parse(script: str) -> tuple[str, ast.Module]:
    with open(os.path.join(REPO, script)) as f:
        source = f.read()
    return source, ast.parse(source, filename=script)


def top_level_source(script: str, name: str) -> str:
    source, tree = parse(script)
    nodes = [n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == name]
    assert len(nodes) == 1, f"{script} should define {name} once at top level, found {len(nodes)}"
    return ast.get_source_segment(source, nodes[0])


@pytest.mark.parametrize("name", SHARED)
def test_shared_algorithm_pieces_are_identical(name):
    mt, atari = top_level_source("bro_mt.py", name), top_level_source("bro_atari.py", name)
    diff = difflib.unified_diff(mt.splitlines(), atari.splitlines(), "bro_mt.py", "bro_atari.py", lineterm="")
    if mt != atari:
        pytest.fail(f"{name} differs between the scripts:\n" + "\n".join(diff), pytrace=False)


def ruff_command() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    if shutil.which("ruff"):
        return [shutil.which("ruff")]
    pytest.skip("ruff is not installed (pip install -r requirements-dev.txt)")


def test_ruff_format_is_clean():
    """Every Python file and notebook is as `ruff format` leaves it (ruff.toml: line length 120)."""
    cmd = ruff_command() + ["format", "--check", "--line-length", "120", "."]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        output = result.stdout + result.stderr
        pytest.fail(f"run `ruff format .` (ruff.toml sets line length 120) to fix:\n{output}", pytrace=False)


def test_ensemble_layers_print_their_sizes():
    import bro_mt

    text = repr(bro_mt.Critic(5, 2, 3, 16))  # obs 5, action 2, 3 tasks, width 16: 2 members, 32-wide embedding
    assert "EnsembleLinear(members=2, in_features=39, out_features=16)" in text  # obs 5 + action 2 + embedding 32
    assert "EnsembleLinear(members=2, in_features=16, out_features=16)" in text  # the residual blocks
    assert "EnsembleLinear(members=2, in_features=16, out_features=101)" in text  # the head: 101 bins
    assert "EnsembleLayerNorm(members=2, features=16, eps=1e-06)" in text


# Per script: the section markers, in reading order. bro_atari.py can join once it uses run_utils.py.
SECTIONS = {
    "bro_mt.py": [
        "# ---- Networks ----",
        "# ---- Categorical projection (C51) ----",
        "# ---- Losses and the update ----",
        "# ---- Reward normalisation ----",
        "# ---- Replay buffer ----",
        "# ---- Evaluation ----",
        "# ---- Ablations and transfer",
        "# ---- Training loop ----",
    ],
}
PLUMBING = {"save_checkpoint", "load_checkpoint", "CUDAGraphUpdate", "fast_update"}  # run_utils.py's


def span(nodes: list[ast.stmt]) -> int:
    return nodes[-1].end_lineno - nodes[0].lineno + 1


def check_reads_as_the_algorithm(script: str, sections: list[str]):
    source, tree = parse(script)
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{script}: no top-level main()"
    main = mains[0]
    main_lines = main.end_lineno - main.lineno + 1
    assert main_lines <= 200, f"{script}: main() is {main_lines} lines (at most 200)"
    loops = [n for n in ast.walk(main) if isinstance(n, ast.While)]
    assert loops, f"{script}: main() has no while loop"
    loop_lines = span(loops[0].body)
    assert loop_lines <= 70, f"{script}: the training loop's body is {loop_lines} lines (at most 70)"

    def is_module(node: ast.ClassDef) -> bool:
        return any(ast.unparse(base) in ("nn.Module", "torch.nn.Module") for base in node.bases)

    modules = [n for n in tree.body if isinstance(n, ast.ClassDef) and is_module(n)]
    assert modules, f"{script}: no nn.Module"
    assert modules[0].lineno < 300, (
        f"{script}: the first network, {modules[0].name}, starts at line {modules[0].lineno}"
    )

    positions = [source.find(marker) for marker in sections]
    missing = [marker for marker, at in zip(sections, positions) if at < 0]
    assert not missing, f"{script}: section markers missing: {missing}"
    assert positions == sorted(positions), f"{script}: sections out of order: {sorted(zip(positions, sections))}"

    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & PLUMBING, f"{script} defines {sorted(defined & PLUMBING)}: they live in run_utils.py"


@pytest.mark.parametrize("script", ["bro_mt.py"])
def test_main_reads_as_the_algorithm(script):
    check_reads_as_the_algorithm(script, SECTIONS[script])


@pytest.mark.parametrize("script", ["bro_mt.py", "bro_atari.py"])
def test_openmp_wait_policy_is_set_before_torch_loads(script):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the default must be set above `import torch`."""
    source = open(os.path.join(REPO, script)).read()
    setting = source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")')
    assert setting < source.index("\nimport torch\n") and setting < source.index(
        "\nfrom brc_utils import run as run_utils\n"
    )
