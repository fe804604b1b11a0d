"""The README and the docs agree with the package and with themselves.

* Every `jaxcnn.<dotted.name>` and every `from jaxcnn... import X` in README.md, docs/**/*.md and
  the tutorials names something that imports, and names it by its home: a module (not a
  package) is only named for what it defines or exports in `__all__` (`jaxcnn.nn.heads.BINARY`,
  not `jaxcnn.nn.network.BINARY`, where it is only imported), the layer catalogue aside.
* Lists written in several places have one source: the package root's re-exports and the API
  index's modules are generated from `jaxcnn.__all__` and the API pages' `::: module` lines
  (docs/hooks.py), and the pages hold the text the hook writes; `models.get`'s names in the
  design are `models.MODELS`.
* Measured figures (wall times, test counts) are stated once, in the "Measured" section of
  docs/benchmarks.md; the tutorials' total there is the sum of its rows.
* The README stays short: at most 250 lines, its first block the two commands.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

import jaxcnn

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
TUTORIALS = sorted((DOCS / "tutorials").glob("[0-9][0-9]_*.py"))
TEXTS = [README, *sorted(DOCS.rglob("*.md")), *TUTORIALS]
MEASURED = DOCS / "benchmarks.md"  # the one page with measured figures
MEASURED_SECTION = "## Measured: the everyday commands"
MAX_README_LINES = 250
# modules that gather names defined elsewhere on purpose, and say so
CATALOGUES = {
    "jaxcnn.nn.layers": "the layer catalogue: every layer importable from one namespace, as "
                        "stax's (its docstring)",
}
# pages allowed their own measured figures besides MEASURED, and why
OWN_FIGURES = {
    "xla_traps.md": "each trap's measurement is part of the trap's description, stated once",
}

DOTTED = re.compile(r"(?<![\w./-])jaxcnn(?:\.[A-Za-z_]\w*)+")
FROM_IMPORT = re.compile(r"^[ \t#]*from[ \t]+(jaxcnn(?:\.\w+)*)[ \t]+import[ \t]+"
                         r"(\([^)]*\)|[^\n]*)", re.M)
# a wall time ("8.6 s", "5-6 s", "10.8 minutes", "57 s") or a test count ("1578 tests")
TIME = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:\s*-\s*\d+(?:\.\d+)?)?\s*"
                  r"(?:s|sec|seconds?|min|minutes?|ms|hours?)\b")
COUNT = re.compile(r"(?<![\w.])\d{3,}\s+(?:tests|passed)\b")


def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- names
def named(text: str) -> set[str]:
    """The dotted jaxcnn names a text mentions, and `from M import a, b` as M.a, M.b."""
    names = set(DOTTED.findall(text))
    for module, imported in FROM_IMPORT.findall(text):
        for item in imported.strip("()").split(","):
            item = item.split("#")[0].split(" as ")[0].strip()
            if item.isidentifier():
                names.add(f"{module}.{item}")
    return names


def split_module(name: str) -> tuple[object, list[str]]:
    """(the longest importable module prefix of `name`, the attribute path after it)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        try:
            return importlib.import_module(".".join(parts[:i])), parts[i:]
        except ImportError:
            continue
    raise ImportError(name)


def resolves(name: str) -> bool:
    try:
        obj, rest = split_module(name)
    except ImportError:
        return False
    for attr in rest:
        fields = {f.name for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else ()
        if attr in fields:  # a dataclass field without a default is no class attribute
            return True
        if not hasattr(obj, attr):
            return False
        obj = getattr(obj, attr)
    return True


@cache
def defined_names(path: str) -> frozenset[str]:
    """The names a module's source defines at top level (def, class, assignment), imports not."""
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                out.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", [])
                      + [s for h in getattr(node, "handlers", []) for s in h.body])

    visit(ast.parse(Path(path).read_text()).body)
    return frozenset(out)


def not_at_home(name: str) -> str | None:
    """Why `name` names something through a module that only imports it, else None."""
    module, rest = split_module(name)
    if not rest or hasattr(module, "__path__") or module.__name__ in CATALOGUES:
        return None
    attr = rest[0]
    if attr in defined_names(module.__file__) or attr in getattr(module, "__all__", ()):
        return None
    homes = [m for m in sorted(_package_modules()) if attr in defined_names(_package_modules()[m])]
    return f"{name}: {module.__name__} only imports {attr}; its home is {homes or '?'}"


@cache
def _package_modules() -> dict[str, str]:
    out = {}
    for path in sorted((ROOT / "jaxcnn").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = str(path)
    return out


def test_the_name_finders():
    text = ("see `jaxcnn.nn.heads.BINARY`, jaxcnn.backward.<op>, docs/jaxcnn.md and\n"
            "from jaxcnn.nn.layers import (\n    Conv2D,\n    Dense,  # dense\n)\n"
            "from jaxcnn import models as m, bridge\n")
    assert named(text) == {"jaxcnn.nn.heads.BINARY", "jaxcnn.backward", "jaxcnn.nn.layers",
                           "jaxcnn.nn.layers.Conv2D", "jaxcnn.nn.layers.Dense", "jaxcnn.models",
                           "jaxcnn.bridge"}
    assert resolves("jaxcnn.training.data.Dataset.x_train") and resolves("jaxcnn.hvp")
    assert not resolves("jaxcnn.nn.heads.BINARIES") and not resolves("jaxcnn.nowhere.thing")
    assert not_at_home("jaxcnn.nn.network.BINARY").endswith("its home is ['jaxcnn.nn.heads']")
    assert not_at_home("jaxcnn.nn.heads.BINARY") is None
    assert not_at_home("jaxcnn.nn.layers.Conv2D") is None   # the catalogue
    assert not_at_home("jaxcnn.manual_grad") is None        # a package re-exports


@pytest.mark.parametrize("path", TEXTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_docs_name_only_importable_things_by_their_home(path):
    names = named(path.read_text())
    missing = sorted(n for n in names if not resolves(n))
    assert not missing, f"{path.name} names what does not import: {missing}"
    away = sorted(filter(None, map(not_at_home, names)))
    assert not away, f"{path.name} names things away from their home: {away}"


# ----------------------------------------------------------------------------- one source
def test_the_generated_lists_are_up_to_date():
    """The text between `<!-- KEY -->` markers is what docs/hooks.py writes there (run
    `python docs/hooks.py` after changing `jaxcnn.__all__` or an API page's modules)."""
    fill = hooks().fill_generated
    stale = [str(p.relative_to(ROOT)) for p in TEXTS if fill(p.read_text()) != p.read_text()]
    assert not stale, f"out of date: {stale}; run python docs/hooks.py"
    for page in (DOCS / "index.md", DOCS / "api" / "index.md"):
        assert "<!-- jaxcnn.__all__ -->" in page.read_text(), page


def test_the_reexports_are_jaxcnn_all():
    modules, names = hooks().package_exports()
    assert set(modules) | set(names) == set(jaxcnn.__all__)
    assert all(inspect_module(getattr(jaxcnn, m)) for m in modules)
    assert not any(inspect_module(getattr(jaxcnn, n)) for n in names)


def inspect_module(obj) -> bool:
    return type(obj).__name__ == "module"


def test_no_page_lists_the_reexports_by_hand():
    """"re-exports" followed by a list of names happens only inside the generated span."""
    by_hand = [str(p.relative_to(ROOT)) for p in TEXTS
               if re.search(r"re-exports?\s+`", p.read_text())]
    assert not by_hand, f"a hand-written list of the package root's names: {by_hand}"


def test_the_api_index_lists_each_pages_modules():
    """Generated for each page of several modules; backward's row says "the same modules" as
    forward's, which holds."""
    text = (DOCS / "api" / "index.md").read_text()
    directives = {page.name: [m.rsplit(".", 1)[1] for m in hooks().DIRECTIVE.findall(
        page.read_text())] for page in sorted((DOCS / "api").glob("*.md"))}
    assert directives["backward.md"] == directives["forward.md"]
    for name, modules in directives.items():
        if len(modules) > 1 and name != "backward.md":
            assert f"<!-- modules:api/{name} -->" in text, name


def test_the_design_names_every_model_of_models_get():
    design = (DOCS / "design.md").read_text()
    start = design.index("jaxcnn.models.get(name")
    comment = " ".join(re.findall(r"#([^\n]*)", design[start:design.index("model.init", start)]))
    listed = set(re.findall(r"[\w-]+", comment.split("by CLI name:", 1)[1].split(" or ")[0]))
    assert listed == set(jaxcnn.models.MODELS), sorted(listed ^ set(jaxcnn.models.MODELS))


# ----------------------------------------------------------------------------- figures
def figures(text: str) -> list[str]:
    """The wall times and test counts a text states."""
    return TIME.findall(text) + COUNT.findall(text)


def test_the_figure_finder():
    text = ("about 20 s for it (8.6 s of training, 5-6 s, 10.8 minutes, 12.0 with the install); "
            "1578 tests, 1338 passed; 3x3 convs, --epochs 40, stride 2, 98.6%, 1e-9, 256 positions")
    assert figures(text) == ["20 s", "8.6 s", "5-6 s", "10.8 minutes", "1578 tests", "1338 passed"]


@pytest.mark.parametrize("path", [p for p in TEXTS if p != MEASURED and p.name not in OWN_FIGURES],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_measured_figures_are_stated_only_on_the_measured_page(path):
    stated = figures(path.read_text())
    assert not stated, (f"{path.relative_to(ROOT)} states measured figures {stated}: state them "
                        f"once, in {MEASURED.relative_to(ROOT)} ('{MEASURED_SECTION}'), and link "
                        "there")


def test_the_measured_section_is_where_the_pages_point():
    text = MEASURED.read_text()
    assert MEASURED_SECTION in text
    anchor = "benchmarks.md#measured-the-everyday-commands"
    for page in (README, DOCS / "tutorials" / "README.md", DOCS / "index.md"):
        assert anchor in page.read_text(), page


def test_the_tutorials_total_is_the_sum_of_its_rows():
    section = MEASURED.read_text().split(MEASURED_SECTION, 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| (\d\. [^|]+?|total) \| (\d+(?:\.\d+)?) \|$", section, re.M))
    total = float(rows.pop("total"))
    assert len(rows) == len(TUTORIALS), f"one row per tutorial: {sorted(rows)}"
    assert abs(sum(map(float, rows.values())) - total) < 0.5 * len(rows), (rows, total)


# ----------------------------------------------------------------------------- the README
def test_the_readme_is_short_and_opens_with_the_two_commands():
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md: {len(lines)} lines > {MAX_README_LINES}"
    first = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert first[0].endswith("&& jaxcnn train") and first[1].endswith("&& pytest -q")
