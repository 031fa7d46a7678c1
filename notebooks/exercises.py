"""The notebooks' exercises: your function if you have written it, else the reference solution.

Each notebook has one exercise: a cell holds a stub, `def my_something(...): raise NotImplementedError`, for you to
fill in, and the next cell compares it with the script's own function on random inputs. Until you have written it,
the comparison runs on the reference solution in notebooks/solutions/{notebook}.py instead (so that the notebook
still runs top to bottom), and says so. Read the solution only after trying.

Strict mode, for graded courses: with the environment variable BRC_STRICT_EXERCISES=1 (set before starting Jupyter,
or in the shell that runs the notebooks), there is no fallback: an unwritten stub fails its check cell with
NotImplementedError, so a notebook runs top to bottom only with every exercise answered.
"""

import importlib.util
import os

SOLUTIONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "solutions")
STRICT = "BRC_STRICT_EXERCISES"  # "1": no fallback to the solutions (graded courses)


def strict() -> bool:
    """Whether the exercises run in strict mode (read when an answer is called, so the kernel's environment counts)."""
    return os.environ.get(STRICT, "0") not in ("", "0")


def solution(notebook: str, name: str):
    """The function `name` from notebooks/solutions/{notebook}.py."""
    path = os.path.join(SOLUTIONS, f"{notebook}.py")
    spec = importlib.util.spec_from_file_location(f"solution_{notebook}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, name)


def answer_or_solution(attempt, notebook: str):
    """A function that calls `attempt`; if it raises NotImplementedError (the stub, not written yet), it announces
    the fact once and calls the solution of the same name from then on. In strict mode it raises instead."""
    chosen = [attempt]

    def answer(*args, **kwargs):
        try:
            return chosen[0](*args, **kwargs)
        except NotImplementedError:
            if chosen[0] is not attempt:
                raise
            if strict():
                raise NotImplementedError(
                    f"{attempt.__name__} is not written yet, and {STRICT}=1 checks your own answer only (no "
                    f"reference solution): write it in the cell above and rerun both cells."
                ) from None
            print(
                f"{attempt.__name__} is not written yet: checking the reference solution in "
                f"notebooks/solutions/{notebook}.py instead. Write yours in the cell above and rerun both cells."
            )
            chosen[0] = solution(notebook, attempt.__name__)
            return chosen[0](*args, **kwargs)

    answer.__name__ = attempt.__name__
    return answer
