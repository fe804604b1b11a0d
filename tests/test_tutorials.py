"""The tutorials (docs/tutorials/NN_*.py, jupytext percent format) run as notebooks, offline.

(a) each `.py` converts with jupytext and executes with nbclient in a fresh IPython kernel of
    this very interpreter; every assertion in its cells must hold. The wall time of each is
    recorded and printed with the total (test_timings). The kernel is shut down on every path
    (a failure, a timeout while it was still starting), so none outlives its test;
(b) the committed `.ipynb` files hold exactly the cells jupytext generates from the `.py`, and
    the outputs of a run without error: they are generated, never edited by hand, and
    docs/tutorials/README.md lists every tutorial;
(c) a tutorial run with one backward rule broken (a cell prepended to the notebook replaces
    `jaxcnn.backward.<rule>`; a pytest monkeypatch would not reach the kernel's process) fails,
    in a cell that checks that rule: the notebooks check what their prose claims.

The kernel inherits this process's environment, so the fast XLA flags of tests/conftest.py
apply to it too. Nothing is downloaded: the tutorials' data are synthetic.

To rebuild the notebooks after editing a tutorial (jupytext's own `--execute` needs nbconvert,
which the dev extra does not install), run this file: it converts every `.py`, executes it as
the tests do, writes the `.ipynb` with its outputs beside it and prints the wall times:

    python tests/test_tutorials.py              # all tutorials
    python tests/test_tutorials.py 01 05        # the ones whose names start so
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import jupytext
import nbformat
import pytest
from ipykernel.kernelspec import get_kernel_dict
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from traitlets import default

from helpers import CHILD_TIMEOUT

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "tutorials"
SOURCES = sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))
# Hang guards, not timings (what a tutorial takes: "Measured" in docs/benchmarks.md); the bounds
# only turn a hung kernel into a failed test, and leave room for a machine 10x slower (a busy CI
# runner).
NOTEBOOK_TIMEOUT = CHILD_TIMEOUT   # seconds for one whole notebook, kernel start included
CELL_TIMEOUT = CHILD_TIMEOUT       # seconds for one cell
TIMES: dict[str, float] = {}   # tutorial -> wall seconds of its run, for test_timings


class _ThisInterpreter(KernelSpecManager):
    """Every kernel name resolves to ipykernel on sys.executable: no kernelspec on disk (a
    user-level "python3" pointing at another Python, or none at all) can change which
    interpreter, and so which installed jaxcnn, runs the notebooks."""

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        return KernelSpec(resource_dir=str(TUTORIALS), **get_kernel_dict())


class _KernelManager(AsyncKernelManager):
    @default("kernel_spec_manager")
    def _kernel_spec_manager_default(self) -> KernelSpecManager:
        return _ThisInterpreter()


def notebook(source: Path) -> nbformat.NotebookNode:
    """The notebook jupytext makes of a tutorial's .py."""
    return jupytext.read(source)


def execute(nb: nbformat.NotebookNode) -> float:
    """Run every cell of `nb` (in place) in a fresh kernel whose working directory is
    docs/tutorials; the wall seconds. Raises CellExecutionError on a failing cell, TimeoutError
    past NOTEBOOK_TIMEOUT (the kernel is shut down either way)."""
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            kernel_manager_class=_KernelManager, allow_errors=False,
                            record_timing=False,  # no timestamps in the written notebooks
                            resources={"metadata": {"path": str(TUTORIALS)}})

    async def run() -> None:
        try:
            await asyncio.wait_for(client.async_execute(), NOTEBOOK_TIMEOUT)
        finally:  # nbclient shuts its kernel down, but not if the timeout hit while it started
            if client.km is not None and client.km.has_kernel:
                await client.km.shutdown_kernel(now=True)

    start = time.perf_counter()
    asyncio.run(run())
    return time.perf_counter() - start


def code_cell(source: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(source)


def test_there_are_tutorials():
    names = [s.stem for s in SOURCES]
    assert names[:2] == ["01_worked_example", "02_convolution_and_pooling"], names
    assert len(names) >= 5


# ----------------------------------------------------------------------------- (a)
@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_tutorial_runs(source):
    nb = notebook(source)
    nb.cells.append(code_cell("import sys\nprint(sys.executable)"))
    try:
        TIMES[source.stem] = execute(nb)
    except CellExecutionError as e:
        pytest.fail(f"{source.name} failed:\n{e}")
    except TimeoutError:
        pytest.fail(f"{source.name} ran past {NOTEBOOK_TIMEOUT} s")
    printed = "".join(o.get("text", "") for o in nb.cells[-1].outputs).strip()
    assert Path(printed).resolve() == Path(sys.executable).resolve()  # this interpreter ran it
    assert sum(c.cell_type == "code" for c in nb.cells) >= 5


def test_timings(capsys):
    """Print each tutorial's measured time and the total (shown even without -s)."""
    # (with no tutorial run in this session, e.g. under -k, there is nothing to print or check)
    lines = ["", "tutorial run times (kernel start included):"]
    lines += [f"  {name:32} {t:6.1f} s" for name, t in TIMES.items()]
    lines.append(f"  {'total':32} {sum(TIMES.values()):6.1f} s")
    with capsys.disabled():
        print("\n".join(lines))
    assert all(t < NOTEBOOK_TIMEOUT for t in TIMES.values())


# ----------------------------------------------------------------------------- (b)
def test_notebooks_are_generated_from_the_sources():
    notebooks = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))
    assert [n.stem for n in notebooks] == [s.stem for s in SOURCES]
    for source, path in zip(SOURCES, notebooks):
        committed = nbformat.read(path, as_version=4)
        generated = notebook(source)
        got = [(c.cell_type, c.source) for c in committed.cells]
        want = [(c.cell_type, c.source) for c in generated.cells]
        assert got == want, (f"{path.name} differs from what jupytext makes of {source.name}; "
                             f"rebuild it: python tests/test_tutorials.py {source.stem[:2]}")
        for c in committed.cells:   # outputs, if any, come from a run that succeeded
            errors = [o for o in c.get("outputs", []) if o.get("output_type") == "error"]
            assert not errors, f"{path.name}: a cell's saved output is an error: {errors[0]}"


def test_readme_lists_every_tutorial():
    readme = (TUTORIALS / "README.md").read_text()
    for source in SOURCES:
        assert source.name in readme, f"docs/tutorials/README.md does not list {source.name}"


# ----------------------------------------------------------------------------- (c)
BREAKS = {
    # tutorial -> (the rule replaced, the code that breaks it, a word of the cell that must fail)
    "01_worked_example": ("conv2d", "dx, dw, db = _rule(*args, **kw)\n"
                                    "    return dx, 1.01 * dw, db", "jaxcnn.manual_grad"),
    "02_convolution_and_pooling": ("max_pool", "return 0.5 * _rule(*args, **kw)",
                                   "backward.max_pool"),
}


@pytest.mark.parametrize("stem", list(BREAKS))
def test_a_broken_rule_fails_the_tutorial(stem):
    rule, body, checked_in = BREAKS[stem]
    nb = notebook(TUTORIALS / f"{stem}.py")
    nb.cells.insert(0, code_cell(
        f"import jaxcnn.backward\n"
        f"_rule = jaxcnn.backward.{rule}\n\n\n"
        f"def _broken(*args, **kw):\n"
        f"    {body}\n\n\n"
        f"jaxcnn.backward.{rule} = _broken   # read by the bridge and the layers built after\n"))
    with pytest.raises(CellExecutionError) as failure:
        execute(nb)
    assert failure.value.ename == "AssertionError", failure.value
    failed = [c for c in nb.cells if c.cell_type == "code"
              and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert len(failed) == 1 and checked_in in failed[0].source, failed


def write_notebooks(prefixes: list[str]) -> None:
    """Convert, execute and write each tutorial's .ipynb (the `__main__` of this file)."""
    chosen = [s for s in SOURCES if not prefixes or s.stem.startswith(tuple(prefixes))]
    total = 0.0
    for source in chosen:
        nb = notebook(source)
        seconds = execute(nb)
        nbformat.write(nb, source.with_suffix(".ipynb"))
        total += seconds
        print(f"{source.with_suffix('.ipynb').relative_to(ROOT)}  {seconds:5.1f} s")
    print(f"total {total:.1f} s")


if __name__ == "__main__":
    write_notebooks(sys.argv[1:])
