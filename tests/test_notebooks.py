"""The teaching notebooks: each one runs top to bottom without errors, is saved with its outputs made by today's
scripts, names only functions and markers the scripts still have, imports the scripts instead of copying them, has
an exercise whose check rejects a wrong answer, has a py:percent pair in sync, and is listed in notebooks/README.md."""

import ast
import glob
import importlib
import os
import re
import sys

import nbformat
import pytest
import torch
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))
EXPECTED = [
    "00_overview.ipynb",
    "01_categorical_critic.ipynb",
    "02_bronet_model_size.ipynb",
    "03_task_embeddings.ipynb",
    "04_reward_normalisation.ipynb",
    "05_training_loop.ipynb",
    "06_atari.ipynb",
    "07_tasks_of_different_sizes.ipynb",
]
SCRIPTS = ["bro_mt.py", "bro_atari.py", "brc_utils/run.py", "brc_utils/envs.py", "brc_utils/atari.py"]
EXECUTE = "python notebooks/execute.py"
sys.path.insert(0, NOTEBOOK_DIR)
import execute  # noqa: E402  (notebooks/execute.py: the hashes and the pair format)


def test_the_notebooks_are_the_listed_ones():
    assert NOTEBOOKS == EXPECTED


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path):
    """Run every cell in a fresh kernel. The notebook is executed in memory and the result written to tmp_path, so the
    saved outputs in the repository stay as they are. The kernel's working directory is notebooks/, as when a
    student opens it; the notebooks write their training runs to temporary directories, never there."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, os.path.join(tmp_path, name))  # the executed copy, to inspect after a failure
    assert not [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_executed_with_plots(name):
    """Saved in order, top to bottom, with no errors and its figures visible when browsing the repository."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in cells] == list(range(1, len(cells) + 1)), "re-run the notebook top to bottom"
    outputs = [o for c in cells for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "no plot saved"
    assert os.path.getsize(os.path.join(NOTEBOOK_DIR, name)) < 400_000, "keep figures small (dpi 72)"


def _script_definitions(script: str) -> set:
    with open(os.path.join(REPO, script)) as f:
        tree = ast.parse(f.read())
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_imports_the_scripts_instead_of_copying(name):
    defined_in_scripts = _script_definitions("bro_mt.py") | _script_definitions("bro_atari.py")
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    tree = ast.parse(source)
    redefined = {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert not redefined & defined_in_scripts, f"{name} redefines {redefined & defined_in_scripts}; import them"
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported & {"bro_mt", "bro_atari"}, f"{name} imports nothing from the scripts"


def test_readme_lists_every_notebook():
    with open(os.path.join(NOTEBOOK_DIR, "README.md")) as f:
        readme = f.read()
    assert not [name for name in NOTEBOOKS if name not in readme]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_saved_outputs_come_from_todays_scripts_and_cells(name):
    """The metadata written by notebooks/execute.py: the scripts' and the cells' hashes at execution time."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    saved = nb.metadata.get("brc", {})
    assert saved.get("scripts_sha256") == execute.scripts_sha256(), (
        f"{name}'s saved outputs were made with other versions of {', '.join(SCRIPTS)} than today's: "
        f"run `{EXECUTE} {name[:2]}` (or `{EXECUTE}` for all) and commit the notebooks"
    )
    assert saved.get("cells_sha256") == execute.cells_sha256(nb), (
        f"{name}'s cells changed after it was executed: run `{EXECUTE} {name[:2]}`"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_py_percent_pair_matches_the_notebook(name):
    """notebooks/py/NAME.py holds the notebook's cells (for reviewable diffs); it must say what the notebook says."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    path = execute.pair_path(os.path.join(NOTEBOOK_DIR, name))
    assert os.path.exists(path), f"no pair {path}: run `{EXECUTE} --pairs-only`"
    pair = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in execute.read_pair_cells(path)]
    notebook = [(c.cell_type, c.source, c.metadata.get("tags", [])) for c in nb.cells]
    assert pair == notebook, (
        f"{path} and {name} differ: after editing the notebook run `{EXECUTE} --pairs-only`; after editing the pair, "
        f"`{EXECUTE} --from-py {name[:2]}`"
    )


# ---- Names the notebooks use must still exist in the scripts ----
def _script_modules() -> list:
    sys.path.insert(0, REPO)
    return [importlib.import_module(script[:-3].replace("/", ".")) for script in SCRIPTS]


def _script_members() -> tuple[set, set]:
    """(top-level names of the scripts, names of every class member (methods, attributes set on self, fields) and
    of every function's parameters)."""
    top, members = set(), set()
    for script in SCRIPTS:
        with open(os.path.join(REPO, script)) as f:
            tree = ast.parse(f.read())
        members |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}  # `pad_to`, `action_sizes`
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                top.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                top |= {t.id for t in targets if isinstance(t, ast.Name)}
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef):
                        members.add(item.name)
                    elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        members.add(item.target.id)
                    elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        members.add(item.attr)
                    elif isinstance(item, ast.Assign):
                        members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
    return top, members


# Names in backticks that are not the scripts': libraries, Python, and plain words.
EXTERNAL_PREFIXES = ("torch", "nn", "F", "np", "jax", "flax", "plt", "math", "tyro", "gym", "gymnasium", "dm_control")
PLAIN_WORDS = {
    "bro_mt",
    "bro_atari",
    "brc_utils",
    "run_utils",
    "python",
    "pytest",
    "jupytext",
    "requires_grad",
    "state_dict",
}
TORCH_ATTRIBUTES = set(dir(torch.nn.Module)) | set(dir(torch.Tensor))  # `scatter_add_`, `.requires_grad_`
FILE_SUFFIXES = (".py", ".md", ".ipynb", ".pt", ".txt", ".toml", ".json", ".npz")
IDENTIFIER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _names_in(nb) -> tuple[list, list]:
    """(dotted names, `# -- ... --` markers) the notebook names in backticks, in its prose and its code comments."""
    text = "\n".join(c.source for c in nb.cells)
    names, markers = [], []
    for token in re.findall(r"`([^`\n]+)`", text):
        token = token.strip()
        if token.startswith("# --"):
            markers.append(token)
            continue
        call = re.match(r"^([A-Za-z_][\w.]*)\(", token)  # `update()`, `Args(reward_norm=False)`: the callee
        name = call.group(1) if call else token
        if IDENTIFIER.match(name) and ("_" in name or "." in name or name[0].isupper() or call):
            names.append(name)
    return names, markers


def _notebook_variables(nb) -> set:
    tree = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    found |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return found | {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}


def unknown_names(nb) -> list[str]:
    """Every backticked name or marker of the notebook, and every name its code imports from the scripts, that the
    scripts do not define (empty when all is well)."""
    modules = _script_modules()
    top, members = _script_members()
    variables = _notebook_variables(nb)
    sources = "\n".join(open(os.path.join(REPO, s)).read() for s in SCRIPTS)
    problems = []
    names, markers = _names_in(nb)
    for name in names:
        head, *rest = name.split(".")
        if head in EXTERNAL_PREFIXES or name in PLAIN_WORDS or name.endswith(FILE_SUFFIXES) or f'"{name}"' in sources:
            continue  # a library, a file, or a string the scripts use (a suite's name such as "DMC_TINY")
        if head in top:  # a script's name: every attribute along the chain must exist in at least one script
            objects = [getattr(m, head) for m in modules if hasattr(m, head)]
            for attr in rest:  # an attribute, or a dataclass field without a class-level default (Args.env_ids)
                objects = [getattr(o, attr, None) or getattr(o, "__dataclass_fields__", {}).get(attr) for o in objects]
                objects = [o for o in objects if o is not None]
            if not objects:
                problems.append(name)
        elif head in members or head in variables or head in TORCH_ATTRIBUTES:  # `critic.embed`, `end_episode`
            if [attr for attr in rest if attr not in members | TORCH_ATTRIBUTES]:  # the members must exist
                problems.append(name)
        else:
            problems.append(name)
    code = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
    by_name = {script[:-3].replace("/", "."): module for script, module in zip(SCRIPTS, modules)}
    for node in ast.walk(code):  # `from bro_mt import X` and `bro_mt.X` in the code, without running it
        if isinstance(node, ast.ImportFrom) and node.module in by_name:
            problems += [f"{node.module}.{a.name}" for a in node.names if not hasattr(by_name[node.module], a.name)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in by_name:
            problems += [f"{node.value.id}.{node.attr}"] if not hasattr(by_name[node.value.id], node.attr) else []
    for marker in markers:
        pattern = re.escape(marker).replace(r"\ \.\.\.\ ", ".*").replace(r"\.\.\.", ".*")
        if not re.search(pattern, sources):
            problems.append(marker)
    return problems


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_names_only_what_the_scripts_define(name):
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    problems = unknown_names(nb)
    assert not problems, f"{name} names {problems} in backticks, which no script ({', '.join(SCRIPTS)}) defines"


def test_the_name_check_catches_a_removed_name_and_marker():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("`critic_loss`, `Critic.embed`, `# -- act --`, `# -- store ... --`")]
    assert unknown_names(nb) == []
    nb.cells.append(nbformat.v4.new_markdown_cell("`save_checkpoint_now`, `Critic.forget`, `# -- train --`"))
    nb.cells.append(
        nbformat.v4.new_code_cell("import bro_mt\nfrom bro_mt import Critic, old_loss\nbro_mt.gone(Critic)")
    )
    assert unknown_names(nb) == [
        "save_checkpoint_now",
        "Critic.forget",
        "bro_mt.old_loss",
        "bro_mt.gone",
        "# -- train --",
    ]


# ---- Exercises: the check cell compares with the script and rejects a wrong answer ----
def _tagged(nb, tag: str) -> list:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _wrong(value):
    """A slightly wrong version of an answer: every number moved by 0.01."""
    if isinstance(value, (tuple, list)):
        return type(value)(_wrong(v) for v in value)
    return value + 0.01


def run_exercise(name: str, replace=None):
    """Run the notebook's first code cell (imports), its `exercise` cell and its `check` cell in a plain namespace,
    with the stub replaced by `replace(namespace)` if given; returns the stub's name."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    (exercise,), (check,) = _tagged(nb, "exercise"), _tagged(nb, "check")
    imports = next(c for c in nb.cells if c.cell_type == "code")
    stub = next(n.name for n in ast.parse(exercise.source).body if isinstance(n, ast.FunctionDef))
    threads, cwd = torch.get_num_threads(), os.getcwd()
    os.chdir(NOTEBOOK_DIR)
    try:
        namespace = {"__name__": "__notebook__"}
        exec(imports.source, namespace)
        exec(exercise.source, namespace)
        if replace is not None:
            namespace[stub] = replace(namespace)  # the answer to try, made from the notebook's namespace
        exec(check.source, namespace)
    finally:
        torch.set_num_threads(threads)
        os.chdir(cwd)
    return stub


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_exercise_check_accepts_the_solution_and_rejects_a_wrong_answer(name, monkeypatch):
    """Once with the stub (the check falls back to the solution and passes), once with the solution's answers moved
    by 0.01, which the check must reject."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    stub = run_exercise(name)
    assert stub.startswith("my_"), "exercises use new names (my_...), never the scripts'"
    import exercises

    solution = exercises.solution(name[: -len(".ipynb")], stub)
    with pytest.raises(AssertionError):
        run_exercise(name, lambda namespace: lambda *args, **kwargs: _wrong(solution(*args, **kwargs)))


def test_exercise_03_rejects_the_detached_actor_loss(monkeypatch):
    """The script's own actor_loss has the right value but no gradient through the actor's input: not an answer."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    with pytest.raises(AssertionError, match="detached"):
        run_exercise("03_task_embeddings.ipynb", lambda namespace: lambda *args: namespace["actor_loss"](*args)[0])


def test_solutions_do_not_redefine_script_names():
    defined_in_scripts = _script_definitions("bro_mt.py") | _script_definitions("bro_atari.py")
    for path in glob.glob(os.path.join(NOTEBOOK_DIR, "solutions", "*.py")):
        with open(path) as f:
            tree = ast.parse(f.read())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & defined_in_scripts, f"{path} redefines {defined & defined_in_scripts}"
