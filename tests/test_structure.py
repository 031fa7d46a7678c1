"""The code's shape: what the two scripts share stays identical, the formatting stays ruff's, and both scripts keep
reading top to bottom as the algorithm (the plumbing lives in brc_utils/). Cheap: the scripts are parsed, not run,
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


# Per script: the section markers, in reading order.
COMMON_SECTIONS = [
    "# ---- Networks ----",
    "# ---- Categorical projection (C51) ----",
    "# ---- Losses and the update ----",
]
COMMON_SECTIONS += ["# ---- Reward normalisation ----", "# ---- Replay buffer ----", "# ---- Evaluation ----"]
SECTIONS = {
    "bro_mt.py": ["# ---- Tasks ----", *COMMON_SECTIONS, "# ---- Ablations and transfer", "# ---- Training loop ----"],
    "bro_atari.py": ["# ---- Games ----", *COMMON_SECTIONS, "# ---- Training loop ----"],
}
for sections in SECTIONS.values():
    sections.append("# ---- Not BRC: ")
PLUMBING = {"save_checkpoint", "load_checkpoint", "CUDAGraphUpdate", "fast_update", "DMCEnv", "AtariGame"}  # brc_utils'
SCRIPTS = list(SECTIONS)

# How far a student reads, and how much plumbing they meet on the way (issue #21's gates).
MAX_LOOP_LINE = 800  # the training loop's `while` (CleanRL's SAC: line 224)
MAX_FIRST_NETWORK_LINE = 200  # the first nn.Module
MAX_PLUMBING_NAMES = 12  # distinct names main() reaches in the run plumbing: run_utils.X and the Run object's run.X
MAX_PLUMBING_STATEMENTS = 5  # simple statements in the loop that call the plumbing or name a checkpoint
MAX_UPDATE_PARAMETERS = 9


def span(nodes: list[ast.stmt]) -> int:
    return nodes[-1].end_lineno - nodes[0].lineno + 1


def main_of(script: str) -> tuple[str, ast.Module, ast.FunctionDef, ast.While]:
    source, tree = parse(script)
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    assert len(mains) == 1, f"{script}: no top-level main()"
    loops = [n for n in ast.walk(mains[0]) if isinstance(n, ast.While)]
    assert loops, f"{script}: main() has no while loop"
    return source, tree, mains[0], loops[0]


def plumbing_names(node: ast.AST) -> set:
    """run_utils.X and run.X (the Run object) reached anywhere under `node`."""
    return {
        f"{n.value.id}.{n.attr}"
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in ("run", "run_utils")
    }


def plumbing_statements(loop: ast.While) -> list[str]:
    """The loop's simple statements (not if / for / with, whose bodies are looked into) that call the plumbing or
    name a checkpoint."""
    found = []
    for node in ast.walk(loop):
        if not isinstance(node, ast.stmt) or isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.Try)):
            continue
        names = plumbing_names(node) | {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and "ckpt" in n.id}
        names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and "checkpoint" in n.id}
        if names:
            found.append(ast.unparse(node).splitlines()[0])
    return found


def check_reads_as_the_algorithm(script: str, sections: list[str]):
    source, tree, main, loop = main_of(script)
    assert loop.lineno <= MAX_LOOP_LINE, f"{script}: the training loop starts at line {loop.lineno}"
    loop_lines = span(loop.body)
    assert loop_lines <= 90, f"{script}: the training loop's body is {loop_lines} lines (at most 90)"

    def is_module(node: ast.ClassDef) -> bool:
        return any(ast.unparse(base) in ("nn.Module", "torch.nn.Module") for base in node.bases)

    modules = [n for n in tree.body if isinstance(n, ast.ClassDef) and is_module(n)]
    assert modules, f"{script}: no nn.Module"
    first = modules[0]
    assert first.lineno <= MAX_FIRST_NETWORK_LINE, (
        f"{script}: the first network, {first.name}, starts at {first.lineno}"
    )

    names = plumbing_names(main)
    assert len(names) <= MAX_PLUMBING_NAMES, f"{script}: main() uses {len(names)} plumbing names: {sorted(names)}"
    statements = plumbing_statements(loop)
    assert len(statements) <= MAX_PLUMBING_STATEMENTS, f"{script}: the loop's plumbing statements: {statements}"

    positions = [source.find(marker) for marker in sections]
    missing = [marker for marker, at in zip(sections, positions) if at < 0]
    assert not missing, f"{script}: section markers missing: {missing}"
    assert positions == sorted(positions), f"{script}: sections out of order: {sorted(zip(positions, sections))}"

    defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    assert not defined & PLUMBING, f"{script} defines {sorted(defined & PLUMBING)}: they live in brc_utils/"


@pytest.mark.parametrize("script", SCRIPTS)
def test_main_reads_as_the_algorithm(script):
    check_reads_as_the_algorithm(script, SECTIONS[script])


def test_the_reading_gates_catch_plumbing_in_the_loop():
    """The measures above see plumbing: a loop that saves by hand and a main that calls one more helper fail."""
    loop = ast.parse("while True:\n    run.save(step, checkpoint)\n    if x:\n        ckpt = run_utils.load()\n").body[
        0
    ]
    assert plumbing_statements(loop) == ["run.save(step, checkpoint)", "ckpt = run_utils.load()"]
    assert plumbing_names(loop) == {"run.save", "run_utils.load"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_update_takes_few_parameters(script):
    _, tree = parse(script)
    update = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "update")
    count = len(update.args.args) + len(update.args.kwonlyargs)
    assert count <= MAX_UPDATE_PARAMETERS, f"{script}: update() takes {count} parameters; bundle them"


def fmt_skips_outside_data_tables(path: str) -> list[str]:
    """Lines whose `# fmt: skip` hides a signature or a call: only data tables (a dict, set or list literal assigned to
    a name) may keep ruff from laying them out."""
    source = open(path).read()
    tree = ast.parse(source)
    skipped = {i + 1 for i, line in enumerate(source.splitlines()) if line.rstrip().endswith("# fmt: skip")}
    tables = {
        n.end_lineno
        for n in ast.walk(tree)
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(n.value, (ast.Dict, ast.Set, ast.List))
    }
    return [f"{os.path.basename(path)}:{line}" for line in sorted(skipped - tables)]


@pytest.mark.parametrize("script", SCRIPTS)
def test_no_fmt_skip_on_signatures_or_calls(script):
    assert not fmt_skips_outside_data_tables(os.path.join(REPO, script))


def test_the_fmt_skip_check_catches_a_call(tmp_path):
    path = tmp_path / "x.py"
    path.write_text("TABLE = {1: 2,\n  3: 4}  # fmt: skip\nf(a,\n  b)  # fmt: skip\n")
    assert fmt_skips_outside_data_tables(str(path)) == ["x.py:4"]


@pytest.mark.parametrize("script", ["bro_mt.py", "bro_atari.py"])
def test_openmp_wait_policy_is_set_before_torch_loads(script):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the default must be set above `import torch`."""
    source = open(os.path.join(REPO, script)).read()
    setting = source.index('os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")')
    assert setting < source.index("\nimport torch\n") and setting < source.index(
        "\nfrom brc_utils import run as run_utils\n"
    )
