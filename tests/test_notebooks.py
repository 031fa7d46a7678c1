"""The teaching notebooks: each one runs top to bottom without errors, names only functions, markers and calls the
scripts still have, imports the scripts instead of copying them, has an exercise whose check rejects a wrong answer,
and is listed in notebooks/README.md. The maintainers' checks (saved with outputs made by today's scripts and cells,
a py:percent pair in sync) run where the notebooks are as committed or with BRC_MAINTAINER=1: see below."""

import ast
import builtins
import glob
import importlib
import inspect
import os
import re
import subprocess
import sys
from typing import Optional

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
EXECUTE = "python notebooks/execute.py"
sys.path.insert(0, NOTEBOOK_DIR)
import execute  # noqa: E402  (notebooks/execute.py: the hashes and the pair format)

SCRIPTS = execute.SCRIPTS  # what the notebooks import, and what their saved outputs' hash covers


def test_the_notebooks_are_the_listed_ones():
    assert NOTEBOOKS == EXPECTED


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, tmp_path, monkeypatch):
    """Run every cell in a fresh kernel. The notebook is executed in memory and the result written to tmp_path, so the
    saved outputs in the repository stay as they are. The kernel's working directory is notebooks/, as when a
    student opens it; the notebooks write their training runs to temporary directories, never there. The exercise
    cell runs as shipped (the stub), whatever answer a student saved in it: the notebook's own check grades that."""
    monkeypatch.delenv("BRC_STRICT_EXERCISES", raising=False)  # the kernel inherits it: unwritten stubs fall back
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    for cell in _tagged(nb, "exercise"):
        cell.source = as_shipped(cell.source)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, os.path.join(tmp_path, name))  # the executed copy, to inspect after a failure
    assert not [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]


# ---- Maintainers' checks: what is saved in the notebook files, not what they teach ----
# A student who answers an exercise and saves the notebook changes its cells, outputs and execution counts; that must
# not turn the suite red. So the checks of the saved file (outputs from today's scripts and cells, saved in order with
# plots, the py:percent pair in sync) run only where the notebook and its pair are as committed (git HEAD: CI, a fresh
# checkout, a maintainer before editing), or with BRC_MAINTAINER=1; BRC_MAINTAINER=0 skips them.
MAINTAINER = "BRC_MAINTAINER"


def maintainers_check_skip_reason(paths: list, repo: str = REPO) -> Optional[str]:
    """Why the maintainers' checks of these files do not run now (None: they run)."""
    mode = os.environ.get(MAINTAINER)
    if mode in ("0", "1"):
        return None if mode == "1" else f"{MAINTAINER}=0"
    status = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=repo, capture_output=True, text=True)
    if status.returncode != 0:
        return f"no git checkout to tell your edits from the committed notebooks ({MAINTAINER}=1 runs it)"
    edited = [line[3:] for line in status.stdout.splitlines()]
    if edited:
        return (
            f"{', '.join(edited)} differ from git HEAD (your edits?); `{MAINTAINER}=1 python -m pytest "
            f"tests/test_notebooks.py` runs it anyway, `git checkout -- {' '.join(edited)}` resets the notebook"
        )
    return None


def skip_unless_maintainers_check(name: str):
    path = os.path.join(NOTEBOOK_DIR, name)
    reason = maintainers_check_skip_reason([path, execute.pair_path(path)])
    if reason:
        pytest.skip(f"a maintainers' check, skipped: {reason}")


def test_maintainers_checks_skip_a_notebook_edited_since_git_head(tmp_path, monkeypatch):
    monkeypatch.delenv(MAINTAINER, raising=False)

    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    git("init", "-q")
    notebook = tmp_path / "01_notebook.ipynb"
    notebook.write_text("{}")
    git("add", notebook.name)
    git("commit", "-q", "-m", "as committed")
    assert maintainers_check_skip_reason([str(notebook)], str(tmp_path)) is None
    notebook.write_text('{"cells": ["an answer"]}')  # a student saves the notebook
    assert f"git checkout -- {notebook.name}" in maintainers_check_skip_reason([str(notebook)], str(tmp_path))
    monkeypatch.setenv(MAINTAINER, "1")
    assert maintainers_check_skip_reason([str(notebook)], str(tmp_path)) is None


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_executed_with_plots(name):
    """Saved in order, top to bottom, with no errors and its figures visible when browsing the repository."""
    skip_unless_maintainers_check(name)
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
    source = "\n".join(c.source for c in _taught_cells(nb) if c.cell_type == "code")
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
    skip_unless_maintainers_check(name)
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    saved = nb.metadata.get("brc", {})
    assert saved.get("scripts_sha256") == execute.scripts_sha256(), (
        f"{name}'s saved outputs were made with other versions of {', '.join(SCRIPTS)} than today's: "
        f"run `{EXECUTE} {name[:2]}` (or `{EXECUTE}` for all) and commit the notebooks (this maintainers' check "
        f"runs on notebooks as committed; {MAINTAINER}=0 skips it while you try changes to the scripts)"
    )
    assert saved.get("cells_sha256") == execute.cells_sha256(nb), (
        f"{name}'s cells changed after it was executed: run `{EXECUTE} {name[:2]}`"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_py_percent_pair_matches_the_notebook(name):
    """notebooks/py/NAME.py holds the notebook's cells (for reviewable diffs); it must say what the notebook says."""
    skip_unless_maintainers_check(name)
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
            elif isinstance(node, ast.ImportFrom) and node.module == "brc_utils":  # `distributed.average_gradients`
                top |= {alias.asname or alias.name for alias in node.names}
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


def _taught_cells(nb) -> list:
    """The cells the notebook teaches with: all but the exercise cell, where a student writes an answer."""
    return [c for c in nb.cells if "exercise" not in c.metadata.get("tags", [])]


def _names_in(nb) -> tuple[list, list, list]:
    """(dotted names, `# -- ... --` markers, code fragments such as `update(batch, nets, ...)`) the notebook quotes in
    backticks, in its prose and its code comments (not in the exercise cell: that one is the student's)."""
    text = "\n".join(c.source for c in _taught_cells(nb))
    names, markers, fragments = [], [], []
    for token in re.findall(r"`([^`\n]+)`", text):
        token = token.strip()
        if token.startswith("# --"):
            markers.append(token)
        elif re.match(r"^[A-Za-z_][\w.]*\s*\(", token):  # `update()`, `Args(reward_norm=False)`: quoted code
            fragments.append(token)
        elif IDENTIFIER.match(token) and ("_" in token or "." in token or token[0].isupper()):
            names.append(token)
    return names, markers, fragments


def _notebook_variables(nb) -> set:
    tree = ast.parse("\n".join(c.source for c in nb.cells if c.cell_type == "code"))
    found = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    found |= {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return found | {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}


class _Scripts:
    """What the scripts define, to look a quoted name up in: their modules, top-level names, class members and
    parameter names, and their source (for string constants and loop markers)."""

    def __init__(self, nb):
        self.modules = _script_modules()
        self.top, self.members = _script_members()
        self.variables = _notebook_variables(nb)
        self.sources = "\n".join(open(os.path.join(REPO, s)).read() for s in SCRIPTS)

    def objects(self, name: str) -> list:
        """Every script object a dotted name of a script's top-level name resolves to (empty: none)."""
        head, *rest = name.split(".")
        objects = [getattr(m, head) for m in self.modules if hasattr(m, head)]
        for attr in rest:  # an attribute, or a dataclass field without a class-level default (Args.env_ids)
            objects = [getattr(o, attr, None) or getattr(o, "__dataclass_fields__", {}).get(attr) for o in objects]
            objects = [o for o in objects if o is not None]
        return objects

    def knows(self, name: str) -> bool:
        """Whether a dotted name is a script's (a top-level name and its attributes, a class member reached through a
        variable or member, a parameter), a library's, a file, or a string the scripts use."""
        head, *rest = name.split(".")
        if head in EXTERNAL_PREFIXES or name in PLAIN_WORDS or name.endswith(FILE_SUFFIXES) or hasattr(builtins, name):
            return True  # a library, a file or a builtin (`NotImplementedError`)
        if f'"{name}"' in self.sources:
            return True  # a string the scripts use (a suite's name such as "DMC_TINY")
        if head in self.top:  # every attribute along the chain must exist in at least one script
            return bool(self.objects(name))
        if head in self.members | self.variables | TORCH_ATTRIBUTES:  # `critic.embed`, `end_episode`
            return all(attr in self.members | TORCH_ATTRIBUTES for attr in rest)
        return False


def _dotted(node) -> Optional[str]:
    """`a.b.c` for a Name or a chain of attributes on a Name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _call_problem(call: ast.Call, name: str, scripts: _Scripts) -> Optional[str]:
    """Why a quoted call of a script's function or class does not fit its signature in any script (None: it fits).
    Keywords must be parameters; a positional argument written as a bare name must be the parameter's own name at
    that position (prose quotes the signature); `...` stands for the arguments left out."""
    reasons = []
    for obj in scripts.objects(name):
        try:
            parameters = list(inspect.signature(obj).parameters.values())
        except (TypeError, ValueError):
            return None  # not callable with a signature (a constant): nothing to compare
        if "." in name and inspect.isclass(scripts.objects(name.rsplit(".", 1)[0])[0]) and inspect.isfunction(obj):
            parameters = parameters[1:]  # `Actor.sample(obs, ...)`: a method, quoted without `self`
        named = {p.name for p in parameters}
        takes_any = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)
        positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        problem = None
        for index, arg in enumerate(call.args):
            if isinstance(arg, ast.Constant) and arg.value is Ellipsis:
                break  # the rest of the positional arguments are left out
            if index >= len(positional):
                problem = None if takes_any else f"{name} takes {len(positional)} positional arguments"
                break
            if isinstance(arg, ast.Name) and arg.id != positional[index].name:
                problem = f"{name}'s argument {index + 1} is `{positional[index].name}`, not `{arg.id}`"
                break
        unknown = [k.arg for k in call.keywords if k.arg and k.arg not in named]
        if problem is None and unknown and not takes_any:
            problem = f"{name} has no parameter {', '.join(unknown)}"
        if problem is None:
            return None  # one script's version fits (critic_loss and update differ between the scripts)
        reasons.append(problem)
    return "; ".join(dict.fromkeys(reasons)) or None


def fragment_problems(fragment: str, scripts: _Scripts) -> list[str]:
    """Why a quoted code fragment, such as `update(batch, nets, ...)` or `Args(reward_norm=False)`, no longer fits the
    scripts: it does not parse, calls a name they do not define, or calls one of their functions with a keyword it
    does not take or an argument named after a different parameter (empty when all is well)."""
    try:
        tree = ast.parse(fragment)
    except SyntaxError:
        return [f"{fragment} (not Python: quote code as code, or drop the backticks)"]
    problems, callees = [], {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func):
            name = _dotted(node.func)
            if not scripts.knows(name):
                problems.append(f"{fragment} ({name} is not defined)")
            elif name.split(".")[0] in scripts.top and (problem := _call_problem(node, name, scripts)):
                problems.append(f"{fragment} ({problem})")
        elif isinstance(node, ast.Name) and id(node) not in callees and "_" in node.id and not scripts.knows(node.id):
            problems.append(f"{fragment} ({node.id} is not defined)")  # an argument such as `losses=MSE_LOSSES`
    return problems


def unknown_names(nb) -> list[str]:
    """Every backticked name, marker or code fragment of the notebook, and every name its code imports from the
    scripts, that the scripts do not define or that no longer fits their signatures (empty when all is well)."""
    scripts = _Scripts(nb)
    names, markers, fragments = _names_in(nb)
    problems = [name for name in names if not scripts.knows(name)]
    for fragment in fragments:
        problems += fragment_problems(fragment, scripts)
    code = ast.parse("\n".join(c.source for c in _taught_cells(nb) if c.cell_type == "code"))
    by_name = {script[:-3].replace("/", "."): module for script, module in zip(SCRIPTS, scripts.modules)}
    for node in ast.walk(code):  # `from bro_mt import X` and `bro_mt.X` in the code, without running it
        if isinstance(node, ast.ImportFrom) and node.module in by_name:
            problems += [f"{node.module}.{a.name}" for a in node.names if not hasattr(by_name[node.module], a.name)]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in by_name:
            problems += [f"{node.value.id}.{node.attr}"] if not hasattr(by_name[node.value.id], node.attr) else []
    for marker in markers:
        pattern = re.escape(marker).replace(r"\ \.\.\.\ ", ".*").replace(r"\.\.\.", ".*")
        if not re.search(pattern, scripts.sources):
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


def test_the_name_check_catches_a_stale_code_fragment():
    """A quoted call must parse, call names the scripts define, and fit today's signature: its keywords are
    parameters and a bare name passed by position is the parameter's own name (`...` leaves arguments out)."""
    nb = nbformat.v4.new_notebook()
    fitting = ["update(batch, nets, ...)", "update(..., losses=MSE_LOSSES)", "Args(reward_norm=False)", "update()"]
    nb.cells = [nbformat.v4.new_markdown_cell(", ".join(f"`{fragment}`" for fragment in fitting))]
    assert unknown_names(nb) == []
    stale = [
        "update(batch, critic, ...)",  # update takes the Nets bundle now
        "critic_loss(..., mse=True)",  # the MSE ablation has its own loss
        "q_value(out, support)",  # not the parameter's name
        "BroNet(width W, depth 2)",  # not Python
        "update(..., losses=OLD_LOSSES)",  # no such constant
        "returns_to_go(rewards, gamma, bootstrap, tail)",  # one argument too many
    ]
    nb.cells = [nbformat.v4.new_markdown_cell(", ".join(f"`{fragment}`" for fragment in stale))]
    assert [problem.split(" (")[0] for problem in unknown_names(nb)] == stale


# ---- Exercises: the check cell compares with the script and rejects a wrong answer ----
def _tagged(nb, tag: str) -> list:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _wrong(value):
    """A slightly wrong version of an answer: every number moved by 0.01."""
    if isinstance(value, (tuple, list)):
        return type(value)(_wrong(v) for v in value)
    return value + 0.01


def as_shipped(exercise_source: str) -> str:
    """An exercise cell as the notebook ships it, whatever a student has written in it: its functions, each with the
    stub's body `raise NotImplementedError`."""
    stubs = [node for node in ast.parse(exercise_source).body if isinstance(node, ast.FunctionDef)]
    for stub in stubs:  # the signature stays; what it may read from the student's own imports goes
        stub.body, stub.decorator_list, stub.returns = [ast.Raise(ast.Name("NotImplementedError"))], [], None
        for arg in ast.walk(stub.args):
            if isinstance(arg, ast.arg):
                arg.annotation = None
    return ast.unparse(ast.fix_missing_locations(ast.Module(stubs, [])))


def run_exercise(name: str, replace=None):
    """Run the notebook's first code cell (imports), its `exercise` cell as shipped (the stub) and its `check` cell in
    a plain namespace, with the stub replaced by `replace(namespace)` if given; returns the stub's name."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    (exercise,), (check,) = _tagged(nb, "exercise"), _tagged(nb, "check")
    imports = next(c for c in nb.cells if c.cell_type == "code")
    exercise.source = as_shipped(exercise.source)
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


def test_a_saved_answer_is_tested_as_the_shipped_stub():
    """A student's answer, right or wrong, stays out of the suite (the notebook's own check cell grades it)."""
    answer = "import math\n\n\ndef my_q_value(critic_out: math.inf, support):\n    return critic_out.mean() + 1\n"
    namespace = {}
    exec(as_shipped(answer), namespace)
    with pytest.raises(NotImplementedError):
        namespace["my_q_value"](torch.zeros(2, 3, 101), torch.zeros(101))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_exercise_check_accepts_the_solution_and_rejects_a_wrong_answer(name, monkeypatch):
    """Once with the stub (the check falls back to the solution and passes), once with the solution's answers moved
    by 0.01, which the check must reject."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.delenv("BRC_STRICT_EXERCISES", raising=False)  # the notebooks as shipped: stubs fall back
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


def test_strict_exercises_fail_on_an_unwritten_stub(monkeypatch):
    """BRC_STRICT_EXERCISES=1 (graded courses): no fallback to the solution, so the stub fails its check; a written
    answer still passes. Run in-process, as the exercise tests above."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("BRC_STRICT_EXERCISES", "1")
    with pytest.raises(NotImplementedError, match="BRC_STRICT_EXERCISES=1"):
        run_exercise("00_overview.ipynb")
    import exercises

    run_exercise("00_overview.ipynb", lambda namespace: exercises.solution("00_overview", "my_q_value"))


def test_solutions_do_not_redefine_script_names():
    defined_in_scripts = _script_definitions("bro_mt.py") | _script_definitions("bro_atari.py")
    for path in glob.glob(os.path.join(NOTEBOOK_DIR, "solutions", "*.py")):
        with open(path) as f:
            tree = ast.parse(f.read())
        defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & defined_in_scripts, f"{path} redefines {defined & defined_in_scripts}"
