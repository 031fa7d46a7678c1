"""The teaching notebooks: each one runs top to bottom without errors, is saved with its outputs, imports the
scripts instead of copying them, and is listed in notebooks/README.md."""

import ast
import glob
import os

import nbformat
import pytest
from nbclient import NotebookClient

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO, "notebooks")
NOTEBOOKS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


def test_the_six_notebooks_exist():
    prefixes = [name[:3] for name in NOTEBOOKS]
    assert prefixes == ["01_", "02_", "03_", "04_", "05_", "06_"], NOTEBOOKS


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
