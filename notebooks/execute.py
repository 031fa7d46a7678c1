"""Re-execute the teaching notebooks top to bottom and save them with their outputs.

    python notebooks/execute.py                 # every notebook, in order (about 4 minutes on a 2-core CPU)
    python notebooks/execute.py 03 07           # only those whose names start with 03 or 07
    python notebooks/execute.py --from-py       # take each notebook's cells from its py:percent pair first
    python notebooks/execute.py --pairs-only    # only rewrite the py:percent pairs from the notebooks (no run)

Each notebook runs in a fresh kernel in notebooks/, as when a student opens it. The saved notebook records in its
metadata (`brc`) the SHA-256 of the scripts it ran against and of its own cells, and its py:percent pair
(notebooks/py/NAME.py, for reviewing diffs) is rewritten from it. tests/test_notebooks.py fails when the scripts or
the cells have changed since, or when a pair is out of sync (maintainers' checks: they run on notebooks as committed,
or with BRC_MAINTAINER=1; see notebooks/README.md). The notebooks seed everything they draw, and this command pins one
thread per kernel, so reruns give the same numbers on one machine.
"""

import argparse
import copy
import glob
import hashlib
import os
import subprocess
import sys
import time

NOTEBOOK_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(NOTEBOOK_DIR)
PAIR_DIR = os.path.join(NOTEBOOK_DIR, "py")
SCRIPTS = [
    "bro_mt.py",
    "bro_atari.py",
    "brc_utils/run.py",
    "brc_utils/distributed.py",
    "brc_utils/envs.py",
    "brc_utils/atari.py",
]  # what the notebooks import
JUPYTEXT_FORMAT = "py:percent"
PAIR_METADATA = {"jupytext": {"notebook_metadata_filter": "-all", "cell_metadata_filter": "tags"}}


def notebook_paths() -> list[str]:
    return sorted(glob.glob(os.path.join(NOTEBOOK_DIR, "*.ipynb")))


def pair_path(notebook_path: str) -> str:
    return os.path.join(PAIR_DIR, os.path.basename(notebook_path)[: -len(".ipynb")] + ".py")


def scripts_sha256() -> str:
    """One hash of the scripts the notebooks import (their exact bytes, in a fixed order)."""
    digest = hashlib.sha256()
    for name in SCRIPTS:
        with open(os.path.join(REPO, name), "rb") as f:
            digest.update(name.encode() + b"\0" + f.read() + b"\0")
    return digest.hexdigest()


def cells_sha256(nb) -> str:
    """One hash of a notebook's cells (type and source), not of their outputs."""
    digest = hashlib.sha256()
    for cell in nb.cells:
        digest.update(cell.cell_type.encode() + b"\0" + cell.source.encode() + b"\0")
    return digest.hexdigest()


def pair_text(nb) -> str:
    """The py:percent text of a notebook: its cells (and cell tags), without outputs or notebook metadata."""
    import jupytext

    bare = copy.deepcopy(nb)
    bare.metadata = copy.deepcopy(PAIR_METADATA)
    for cell in bare.cells:
        cell.metadata = {"tags": cell.metadata["tags"]} if cell.metadata.get("tags") else {}
    return jupytext.writes(bare, fmt=JUPYTEXT_FORMAT)


def read_pair_cells(path: str) -> list:
    import jupytext

    with open(path) as f:
        return jupytext.reads(f.read(), fmt=JUPYTEXT_FORMAT).cells


def write_pair(nb, notebook_path: str):
    os.makedirs(PAIR_DIR, exist_ok=True)
    with open(pair_path(notebook_path), "w") as f:
        f.write(pair_text(nb))


def take_cells_from_pair(nb, notebook_path: str):
    """Replace the notebook's cells by its pair's (outputs are dropped: the notebook is executed next)."""
    import nbformat

    cells = read_pair_cells(pair_path(notebook_path))
    nb.cells = [
        (nbformat.v4.new_markdown_cell if c.cell_type == "markdown" else nbformat.v4.new_code_cell)(
            c.source, metadata={"tags": c.metadata["tags"]} if c.metadata.get("tags") else {}
        )
        for c in cells
    ]


def execute(notebook_path: str, from_py: bool):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(notebook_path, as_version=4)
    if from_py:
        take_cells_from_pair(nb, notebook_path)
    for index, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{index:02d}"  # stable ids: no diff noise from random ones
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}, allow_errors=False
    )
    client.execute()
    nb.metadata["brc"] = {
        "scripts_sha256": scripts_sha256(),
        "cells_sha256": cells_sha256(nb),
        "executed_with": "python notebooks/execute.py",
    }
    nbformat.write(nb, notebook_path)
    write_pair(nb, notebook_path)


def ruff_format(paths: list[str]):
    result = subprocess.run([sys.executable, "-m", "ruff", "format", "--quiet", *paths], cwd=REPO)
    if result.returncode != 0:
        print("note: `ruff format` did not run (pip install -r requirements-dev.txt); the format test will say more")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*", help="only notebooks whose names start with one of these (e.g. 03)")
    parser.add_argument("--from-py", action="store_true", help="take the cells from the py:percent pairs first")
    parser.add_argument("--pairs-only", action="store_true", help="only rewrite the pairs from the notebooks")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernels inherit it: one thread, as the notebooks ask
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"  # figures saved as PNG outputs
    paths = [p for p in notebook_paths() if not args.prefixes or os.path.basename(p).startswith(tuple(args.prefixes))]
    if not paths:
        raise SystemExit(f"no notebook in {NOTEBOOK_DIR} starts with {args.prefixes}")
    sources = [pair_path(p) if args.from_py else p for p in paths]
    ruff_format(sources)  # before running: the saved cells hash is of the formatted cells
    total = time.time()
    for path in paths:
        if args.pairs_only:
            import nbformat

            write_pair(nbformat.read(path, as_version=4), path)
            continue
        start = time.time()
        print(f"{os.path.basename(path)} ...", end=" ", flush=True)
        execute(path, args.from_py)
        print(f"{time.time() - start:.0f} s, {os.path.getsize(path) / 1000:.0f} kB", flush=True)
    ruff_format([pair_path(p) for p in paths])
    if not args.pairs_only:
        print(f"all {len(paths)} executed in {time.time() - total:.0f} s; scripts sha256 {scripts_sha256()[:12]}")


if __name__ == "__main__":
    main()
