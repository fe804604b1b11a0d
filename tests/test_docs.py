"""The documentation site builds offline with `mkdocs build --strict`, without a warning; its API
reference shows every public function of the library and no module-level alias; their
docstrings state shapes; the python blocks of the site's own pages run (each on its own, or in
order in one namespace where the page says so: docs/build_your_own.md, whose files and
`jaxcnn gradcheck` commands run too); the tutorials hook renders notebooks (and copes with none).

The site is built once per test run, in a temporary folder (`mkdocs build`, mkdocstrings reading
the sources with griffe: a few seconds).
"""

import contextlib
import glob
import importlib
import importlib.util
import inspect
import io
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_readme import mentioned_paths, python_blocks

import jaxcnn

from helpers import run_child

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# the pages written by hand for the site (the tutorials are tested where they are written)
PAGES = sorted([*DOCS.glob("*.md"), *DOCS.glob("api/*.md")])
SUBPACKAGES = ("forward", "backward", "nn", "training")  # whose functions must be in the API

# What counts as stating a shape. Ops: the brief's rule, "(N," or the word "shape" or a
# parenthesised shape: comma-separated dimensions (names, numbers, "...", "C_in // groups"), at
# least one of them dimension-like (capitalised, a number or "..."): "(kh, kw, C_in // groups,
# C_out)", "(3, 3, 1, 1)", "(8, ...)", "(N,)"; not "(params, x, y)" nor a parenthetical remark.
# Elsewhere also an image size such as "8x8" or "28x28".
_DIM = r"\*?(?:[A-Za-z_]\w*|\d+|\.\.\.|-1)(?:\s*(?://|[*+-])\s*(?:[A-Za-z_]\w*|\d+))*"
SHAPE = re.compile(r"\(N,|shape|(?<![\w\]])\((?=[^()]*,)(?=[^()]*(?:\b[A-Z]|\b\d|\.\.\.))"
                   rf"\s*{_DIM}(?:\s*,\s*{_DIM})*\s*,?\s*\)")
IMAGE_SIZE = re.compile(r"\b\d+x\d+")
# Outside the ops, the rule holds a function to its shapes when it takes arrays (or a pytree of
# them) or returns arrays or something whose shapes it fixes (a network, a layer, a dataset); a
# function that returns None is exempt.
TAKES_ARRAYS = re.compile(r"\b(Array|ndarray|Params|State)\b")
RETURNS_ARRAYS = re.compile(r"\b(Array|ndarray|Params|State|Network|Layer|Dataset)\b")
SHAPE_EXEMPT = {  # where a shape is meaningless for the function itself, and why
    "jaxcnn.nn.models.get": "a lookup by name; each model's builder states its input shape",
    "jaxcnn.nn.lookup.model": "the same lookup, for the command line",
    "jaxcnn.training.data.load": "a lookup by CLI name; each loader states its shapes",
    "jaxcnn.training.run.fit": "a whole run from a TrainConfig; no array in or out",
    "jaxcnn.training.steps.train_step_fn": "make_train_step's step, documented there",
}


def public_modules(package: str) -> list[str]:
    """The modules (not packages) of `package` and its subpackages whose names do not start
    with an underscore; found without importing them (bench_torch needs PyTorch)."""
    pkg = importlib.import_module(package)
    return sorted(m.name for m in pkgutil.walk_packages(pkg.__path__, f"{package}.")
                  if not m.ispkg and not any(p.startswith("_") for p in m.name.split(".")))


def public_functions(module_name: str) -> dict[str, object]:
    """{full name: function}: the names in `__all__`, else the functions defined in the module
    whose names do not start with an underscore."""
    mod = importlib.import_module(module_name)
    if hasattr(mod, "__all__"):
        items = [(n, getattr(mod, n)) for n in mod.__all__]
    else:
        items = [(n, f) for n, f in vars(mod).items()
                 if not n.startswith("_") and getattr(f, "__module__", None) == module_name]
    return {f"{module_name}.{n}": f for n, f in items if inspect.isfunction(f)}


CHECKED_MODULES = [m for sub in SUBPACKAGES for m in public_modules(f"jaxcnn.{sub}")]
FUNCTIONS = {k: f for m in CHECKED_MODULES for k, f in public_functions(m).items()}


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    site = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner, not ours
    proc = run_child([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                      str(site)], cwd=ROOT, env=env, capture_output=True, text=True)
    return proc, site


@pytest.fixture(scope="module")
def api_html(build) -> str:
    _, site = build
    pages = sorted((site / "api").rglob("*.html"))
    assert pages, "the build wrote no API pages"
    return "\n".join(p.read_text() for p in pages)


def test_site_builds_strict_without_warnings(build):
    proc, _ = build
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert proc.returncode == 0 and not warnings, (
        f"mkdocs build --strict: exit {proc.returncode}, {len(warnings)} warnings:\n"
        + "\n".join(warnings or output.splitlines()[-30:]))


def test_the_checked_modules_are_the_ones_named():
    assert {"jaxcnn.forward.conv", "jaxcnn.backward.pool", "jaxcnn.nn.layers",
            "jaxcnn.nn.grads", "jaxcnn.training.steps", "jaxcnn.training.plots"} <= set(
        CHECKED_MODULES)
    assert "jaxcnn.forward.conv.conv2d" in FUNCTIONS and "jaxcnn.nn.conv_layers.Conv2D" in FUNCTIONS
    assert not any(".backward._upstream" in name for name in FUNCTIONS)
    assert len(FUNCTIONS) > 100


def test_every_public_module_has_an_api_page():
    """Every public module of the package is rendered by a `::: module` line of docs/api."""
    directives = set(re.findall(r"^::: ([\w.]+)\s*$", "\n".join(
        p.read_text() for p in DOCS.glob("api/*.md")), re.M))
    missing = [m for m in public_modules("jaxcnn") if m not in directives
               and not any(m.startswith(f"{d}.") for d in directives)]
    assert not missing, f"modules without a `::: name` in docs/api/*.md: {missing}"


def test_every_public_function_is_in_the_api_pages(api_html):
    missing = [name for name in FUNCTIONS if f'id="{name}"' not in api_html]
    assert not missing, f"public functions missing from the built API pages: {missing}"


def _shape_rule_applies(name: str, fn) -> bool:
    if name in SHAPE_EXEMPT:
        return False
    sig = inspect.signature(fn)
    if str(sig.return_annotation) in ("None", "Iterator[None]"):
        return False
    if name.split(".")[1] in ("forward", "backward"):
        return True
    annotations = " ".join(str(p.annotation) for p in sig.parameters.values())
    return bool(TAKES_ARRAYS.search(annotations)
                or RETURNS_ARRAYS.search(str(sig.return_annotation)))


def _states_shapes(name: str, doc: str) -> bool:
    op = name.split(".")[1] in ("forward", "backward")
    return bool(SHAPE.search(doc) or (not op and IMAGE_SIZE.search(doc)))


@pytest.mark.parametrize("module", CHECKED_MODULES)
def test_docstrings_state_shapes(module):
    failing = [name for name, fn in public_functions(module).items()
               if _shape_rule_applies(name, fn)
               and not _states_shapes(name, inspect.getdoc(fn) or "")]
    assert not failing, (
        f"docstrings that state no shape (no '(N,', 'shape' or a shape like (N, H, W, C)): "
        f"{failing}")


def test_shape_rule_reads_shapes_and_only_shapes():
    yes = ["x (N, H, W, C)", "w: HWIO (kh, kw, C_in // groups, C_out)", "every leaf (8, ...)",
           "returns (D_in, D_out)", "any shape", "labels (N,)", "(N, *spatial, C)", "(3, 3, 1, 1)",
           "(H, W, C_in) -> (O_h, O_w, features)"]
    no = ["(loss, grads)", "(params, state, opt_state, (x, y), key)", "max(x, 0)",
          "(on the CPU it did, inside the fusion)", "(step records, epoch records)"]
    assert all(SHAPE.search(t) for t in yes) and not any(SHAPE.search(t) for t in no)
    assert set(SHAPE_EXEMPT) <= set(FUNCTIONS), "an exemption names no public function"


def test_every_file_the_pages_name_exists():
    missing = [(p.name, path) for p in PAGES for path in mentioned_paths(p.read_text())
               if not glob.glob(str(ROOT / path))]
    assert not missing, f"(page, the file it names that does not exist): {missing}"


# A page whose python blocks build on each other says so (an HTML comment, not shown): they run
# in order in one namespace, in a folder holding the files its `title="NAME.py"` blocks define.
SEQUENTIAL_MARK = "runs this page's python blocks in order, in one namespace"
FENCE = re.compile(r"^```python(?:[ \t]+title=\"([\w.]+)\")?[ \t]*\n(.*?)^```", re.S | re.M)
SEQUENTIAL = [p for p in PAGES if SEQUENTIAL_MARK in p.read_text()]
BLOCKS = [(p, line, src) for p in PAGES if p not in SEQUENTIAL
          for line, src in python_blocks(p.read_text())]


def page_blocks(text: str) -> list[tuple[str | None, str]]:
    """(file name or None, source) of every python block of a page, titled ones included."""
    return [(m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def bash_lines(text: str, command: str) -> list[list[str]]:
    """The argument lists of the lines of a page's bash blocks that start with `command`."""
    bodies = re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)
    return [line.split()[1:] for body in bodies for line in body.splitlines()
            if line.startswith(command + " ")]


def test_page_block_parsers():
    text = ('```python title="m.py"\ndef f():\n    pass\n```\n\n```python\nx = 1\n```\n'
            '```bash\njaxcnn gradcheck --model m:f\njaxcnn train\n```\n')
    assert page_blocks(text) == [("m.py", "def f():\n    pass\n"), (None, "x = 1\n")]
    assert bash_lines(text, "jaxcnn gradcheck") == [["gradcheck", "--model", "m:f"]]
    assert [p.name for p in SEQUENTIAL] == ["build_your_own.md"]


@pytest.mark.parametrize("page", SEQUENTIAL, ids=lambda p: p.name)
def test_sequential_page_runs_and_its_models_pass_gradcheck(page, tmp_path, monkeypatch):
    """The blocks in order in one namespace (a reader's session), with the files the page
    defines saved in the working directory; then the page's `jaxcnn gradcheck` lines there."""
    blocks = page_blocks(page.read_text())
    files = {name: src for name, src in blocks if name}
    assert files and len(blocks) > len(files), "a file to save and code that uses it"
    for name, src in files.items():
        (tmp_path / name).write_text(src)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace = {"__name__": "__docs__"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            for name, src in blocks:
                if name is None:
                    exec(compile(src, str(page), "exec"), namespace)
    finally:
        for name in files:
            sys.modules.pop(Path(name).stem, None)
    commands = bash_lines(page.read_text(), "jaxcnn gradcheck")
    assert commands, f"{page.name}: no `jaxcnn gradcheck` line"
    for argv in commands:
        proc = run_child([sys.executable, "-m", "jaxcnn.tools.cli", *argv], cwd=tmp_path,
                         capture_output=True, text=True)
        assert proc.returncode == 0 and "PASS" in proc.stdout, (argv, proc.stdout[-2000:],
                                                                proc.stderr[-2000:])


@pytest.mark.parametrize("page, line, source", BLOCKS,
                         ids=[f"{p.relative_to(DOCS)}:{n}" for p, n, _ in BLOCKS])
def test_page_python_block_runs(page, line, source):
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, str(page), "exec"), {"__name__": "__docs__"})


def test_the_tutorials_are_pages_of_the_site(build):
    _, site = build
    for source in sorted((DOCS / "tutorials").glob("[0-9][0-9]_*.py")):
        page = site / "tutorials" / source.stem / "index.html"
        assert page.is_file(), f"{source.name} was not rendered to {page}"
    assert (site / "tutorials" / "index.html").is_file()
    assert (site / "experiments" / "PERFORMANCE" / "index.html").is_file()


# ----------------------------------------------------------------------------- the hook itself
@pytest.fixture
def hooks(monkeypatch, tmp_path):
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "TUTORIALS", tmp_path)
    return module


def _config():
    from mkdocs.config import load_config

    with contextlib.redirect_stderr(io.StringIO()):
        return load_config(str(ROOT / "mkdocs.yml"))


def test_hook_builds_a_tutorials_section_when_there_is_no_tutorial(hooks):
    from mkdocs.structure.files import Files

    config = hooks.on_config(_config())
    tutorials = next(item["Tutorials"] for item in config.nav
                     if isinstance(item, dict) and "Tutorials" in item)
    assert tutorials == [{"Overview": "tutorials/index.md"}]
    config.plugins._current_plugin = None  # what mkdocs sets around each event of a build
    files = hooks.on_files(Files([]), config)
    index = files.get_file_from_path("tutorials/index.md")
    assert index is not None and "No tutorials yet" in index.content_string
    assert files.get_file_from_path("experiments/PERFORMANCE.md") is not None


def test_hook_makes_the_tutorials_readme_their_index(hooks, tmp_path):
    from mkdocs.structure.files import File, Files

    (tmp_path / "01_demo.py").write_text("# %% [markdown]\n# # Demo\n")
    (tmp_path / "README.md").write_text("# The tutorials\n\n* [Demo](01_demo.py)\n")
    config = hooks.on_config(_config())
    config.plugins._current_plugin = None
    readme = File.generated(config, "tutorials/README.md", content="stand-in for the real file")
    files = hooks.on_files(Files([readme]), config)
    assert files.get_file_from_path("tutorials/README.md") is None
    index = files.get_file_from_path("tutorials/index.md").content_string
    assert index == "# The tutorials\n\n* [Demo](01_demo.md)\n"
    assert files.get_file_from_path("tutorials/01_demo.md") is not None


def test_hook_renders_a_notebook_with_its_outputs(hooks, tmp_path):
    import jupytext
    import nbformat

    source = tmp_path / "01_demo.py"
    source.write_text('# %% [markdown]\n# # Demo\n# Next: [two](02_more.py).\n\n'
                      '# %%\nprint("hi")\n\n# %% tags=["remove-cell"]\nhidden = 1\n\n'
                      '# %%\n1 + 1\n')
    (tmp_path / "02_more.py").write_text("# %%\nx = 1\n")
    notebook = jupytext.read(source)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    code[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="hi\n")]
    code[2].outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "2"},
                                              execution_count=1)]
    code[2].source = "2 + 2"  # a notebook out of date for this cell: its output is not shown
    nbformat.write(notebook, tmp_path / "01_demo.ipynb")
    page = hooks.render(source)
    assert page.startswith("# Demo\n\n*This page is made from [01_demo.py](01_demo.py) and "
                           "[01_demo.ipynb](01_demo.ipynb).*")
    assert "[two](02_more.md)" in page and "hidden" not in page
    assert '```python\nprint("hi")\n```\n\n```text\nhi\n```' in page
    assert "```python\n1 + 1\n```\n" in page and "```text\n2" not in page
    assert [hooks.title(p) for p in hooks.tutorial_sources()] == ["Demo", "02 more"]


def test_package_root_reexports_what_the_api_index_says():
    index = (DOCS / "api" / "index.md").read_text()
    said = index.split("re-exports", 1)[1].split("<!-- /jaxcnn.__all__ -->", 1)[0]
    assert set(re.findall(r"`(\w+)`", said)) == set(jaxcnn.__all__)


# names of the API pages that are module-level aliases or private helpers, not the API
HIDDEN_ALIASES = ("jaxcnn.nn.layer.Array", "jaxcnn.nn.layer.Shape", "jaxcnn.nn.layer.Initializer",
                  "jaxcnn.nn.layer.HE_NORMAL", "jaxcnn.nn.network.Params",
                  "jaxcnn.training.steps.Array")


def test_the_api_pages_do_not_list_module_aliases(api_html):
    """docs/griffe_public.py leaves out undocumented module-level names that `__all__` does not
    export (Array, Shape, Initializer, HE_NORMAL, ...); classes' members stay."""
    shown = [name for name in HIDDEN_ALIASES if f'id="{name}"' in api_html]
    assert not shown, f"module-level aliases listed in the API pages: {shown}"
    assert 'id="jaxcnn.training.data.Dataset.x_train"' in api_html  # a class member, kept
    assert 'id="jaxcnn.nn.models.MODELS"' in api_html  # exported in __all__, kept
