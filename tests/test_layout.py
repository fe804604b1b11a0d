"""The package keeps the shape docs/design.md draws: no import cycles, imports only downwards
through the layers, `jaxcnn.fast` reached only from the conv rules, forward/ and backward/ twins
name for name, short modules and functions, and `impl` chosen where a layer is built, never
threaded through networks, gradients and trainers.

Every check is a function of parsed sources (`ast`, nothing imported), so each is also fed a small
bad example below to show that it can fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import pytest

import jaxcnn.backward
import jaxcnn.forward

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "jaxcnn"

# Lowest first; a module may import from its own layer or a lower one. The package root
# (jaxcnn/__init__.py, the public facade) sits above them all.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("jaxcnn._precision", "jaxcnn._bounds", "jaxcnn._geometry", "jaxcnn._window"),
    ("jaxcnn.fast",),
    ("jaxcnn.forward",),
    ("jaxcnn.backward",),
    ("jaxcnn.nn",),
    ("jaxcnn.bridge",),
    ("jaxcnn.training",),
    ("jaxcnn.tools",),
)
FAST = "jaxcnn.fast"
FAST_IMPORTERS = ("jaxcnn.forward.conv", "jaxcnn.backward.conv")
MAX_MODULE_LINES, LONG_MODULE_EXCUSE = 400, "over 400 lines because"
MAX_FUNCTION_LINES = 60
# where `impl` must not be a parameter (nor a TrainConfig field): the model carries it. The one
# exception is the rebuilder itself, `Network.with_impl(impl)`, which builds a new model.
IMPL_BUILDERS = ("with_impl",)
NO_IMPL = ("jaxcnn/nn/network.py", "jaxcnn/nn/grads.py", "jaxcnn/training/steps.py",
           "jaxcnn/training/parallel.py", "jaxcnn/training/per_example.py",
           "jaxcnn/training/run.py")


class Module(NamedTuple):
    source: str
    is_package: bool  # an __init__.py: the module of the package itself
    path: str = ""


# ----------------------------------------------------------------------------- the import graph
def package_modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Module]:
    """Every module under root/package, by dotted name; a package's __init__ is the package."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        out[name] = Module(path.read_text(), is_package, str(path.relative_to(root)))
    return out


def _known(name: str, modules: dict[str, Module]) -> str | None:
    """`name` if it is a module of the package, else its longest prefix that is, else None."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in modules:
            return ".".join(parts[:n])
    return None


def imports_of(name: str, modules: dict[str, Module]) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its source (lazy imports in
    functions and TYPE_CHECKING blocks included).

    `from a import b` is an import of the module a.b when there is one (`from jaxcnn import
    _geometry` imports jaxcnn._geometry, not the package root), else of a itself (a name its
    __init__ defines). Relative imports are resolved against the importing module's package.
    Importing a.b.c runs a/__init__ first, but that is not counted as an edge: a package's
    __init__ importing its own children is then never a cycle by itself, while a child that
    imports its package (or a sibling) which imports it back is.
    """
    mod = modules[name]
    package = name if mod.is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(mod.source)):
        if isinstance(node, ast.Import):
            found |= {_known(a.name, modules) for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[:len(parts) - node.level + 1], node.module or ""])
                base = base.rstrip(".")
            else:
                base = node.module or ""
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules
                          else _known(base, modules))
    return found - {None}


def import_graph(modules: dict[str, Module]) -> dict[str, set[str]]:
    return {name: imports_of(name, modules) for name in modules}


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """`start` and every module it imports, transitively."""
    seen, todo = {start}, [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


# ----------------------------------------------------------------------------- the checks
def layer_of(name: str) -> int | None:
    """The layer index of a module, len(LAYERS) for the package root, None if unplaced."""
    if name == PACKAGE:
        return len(LAYERS)
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = [f"{m} belongs to no layer (add it to tests/test_layout.py's LAYERS)"
           for m in graph if layer_of(m) is None]
    for src, targets in sorted(graph.items()):
        for dst in sorted(targets):
            ls, ld = layer_of(src), layer_of(dst)
            if ls is not None and ld is not None and ld > ls:
                bad.append(f"{src} (layer {ls}) imports {dst} (layer {ld})")
    return bad


def fast_violations(graph: dict[str, set[str]]) -> list[str]:
    def in_fast(m: str) -> bool:
        return m == FAST or m.startswith(FAST + ".")

    return [f"{src} imports {dst}" for src, targets in sorted(graph.items())
            for dst in sorted(targets)
            if in_fast(dst) and not in_fast(src) and src not in FAST_IMPORTERS]


def length_violations(modules: dict[str, Module]) -> list[str]:
    bad = []
    for name, mod in sorted(modules.items()):
        tree = ast.parse(mod.source)
        lines = len(mod.source.splitlines())
        if lines > MAX_MODULE_LINES and LONG_MODULE_EXCUSE not in (ast.get_docstring(tree) or ""):
            bad.append(f"{name}: {lines} lines (> {MAX_MODULE_LINES}, and its docstring does not "
                       f"say why: '{LONG_MODULE_EXCUSE} ...')")
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append(f"{name}: {node.name} (line {node.lineno}) has {n} lines "
                               f"(> {MAX_FUNCTION_LINES})")
    return bad


def impl_parameters(source: str, where: str = "") -> list[str]:
    """Every function or lambda parameter named `impl` (but those of `IMPL_BUILDERS`, which
    build a model), and every class field named `impl` (TrainConfig's, a NamedTuple's)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if getattr(node, "name", None) in IMPL_BUILDERS:
            continue
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            a = node.args
            names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                     if x is not None]
            if "impl" in names:
                bad.append(f"{where}:{node.lineno} {getattr(node, 'name', 'lambda')}(impl=...)")
        elif isinstance(node, ast.ClassDef):
            for stmt in node.body:
                if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                        and stmt.target.id == "impl"):
                    bad.append(f"{where}:{stmt.lineno} {node.name}.impl (a field)")
    return bad


# ----------------------------------------------------------------------------- on the package
@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return package_modules()


@pytest.fixture(scope="module")
def graph(modules) -> dict[str, set[str]]:
    return import_graph(modules)


def test_the_graph_sees_the_layout(graph):
    """A sanity check of the parser: edges the layout is known to have are found."""
    assert "jaxcnn.forward.conv" in graph["jaxcnn.backward.conv"]
    assert "jaxcnn._geometry" in graph["jaxcnn.forward.conv"]  # from jaxcnn import _geometry
    assert "jaxcnn.fast" in graph["jaxcnn.forward.conv"]
    assert {"jaxcnn.forward.conv", "jaxcnn.forward.pool"} <= graph["jaxcnn.forward"]
    assert PACKAGE not in graph["jaxcnn.forward.activation"]


def test_no_import_cycles(graph):
    assert not cycles(graph), f"import cycles: {cycles(graph)}"


def test_imports_go_down_the_layers(graph):
    bad = layer_violations(graph)
    assert not bad, "imports from a higher layer:\n" + "\n".join(bad)


def test_only_the_conv_rules_reach_fast(graph):
    bad = fast_violations(graph)
    assert not bad, f"only {FAST_IMPORTERS} may import {FAST}:\n" + "\n".join(bad)


def test_forward_and_backward_are_twins():
    assert jaxcnn.forward.__all__ == jaxcnn.backward.__all__
    assert list(jaxcnn.forward.FAMILIES) == list(jaxcnn.backward.FAMILIES)
    for pkg in (jaxcnn.forward, jaxcnn.backward):
        union = sorted(n for fam in pkg.FAMILIES.values() for n in fam.__all__)
        assert sorted(pkg.__all__) == union, pkg.__name__
        assert len(union) == len(set(union)), f"{pkg.__name__}: a name in two families"
        for n in pkg.__all__:
            assert callable(getattr(pkg, n)), f"{pkg.__name__}.{n}"
    for fam in jaxcnn.forward.FAMILIES:
        fwd, bwd = jaxcnn.forward.FAMILIES[fam], jaxcnn.backward.FAMILIES[fam]
        assert fwd.__name__ == f"jaxcnn.forward.{fam}" and bwd.__name__ == f"jaxcnn.backward.{fam}"
        assert fwd.__all__ == bwd.__all__, fam


def test_modules_and_functions_are_short(modules):
    bad = length_violations(modules)
    assert not bad, "too long:\n" + "\n".join(bad)


@pytest.mark.parametrize("path", NO_IMPL)
def test_impl_is_chosen_where_a_layer_is_built(path):
    bad = impl_parameters((ROOT / path).read_text(), path)
    assert not bad, f"`impl` threaded through {path}: {bad}"


# ----------------------------------------------------------------------------- each check can fail
def _fake(**sources: str) -> dict[str, Module]:
    """Modules from keyword sources: `pkg__init` is package pkg, `pkg__a` its module pkg.a."""
    out = {}
    for key, src in sources.items():
        parts = key.split("__")
        is_package = parts[-1] == "init"
        out[".".join(parts[:-1] if is_package else parts)] = Module(src, is_package)
    return out


def test_cycle_check_catches_a_cycle_and_spares_re_exports():
    reexport = _fake(jaxcnn__init="from jaxcnn import a, b\n", jaxcnn__a="from jaxcnn import b\n",
                     jaxcnn__b="import numpy\n")
    assert not cycles(import_graph(reexport))
    siblings = _fake(jaxcnn__init="from jaxcnn import a\n", jaxcnn__a="from jaxcnn import b\n",
                     jaxcnn__b="from . import a\n")
    assert cycles(import_graph(siblings)) == [["jaxcnn.a", "jaxcnn.b"]]
    back_to_the_package = _fake(jaxcnn__init="from jaxcnn import x\n",
                                jaxcnn__x__init="from .m import f\n",
                                jaxcnn__x__m="from jaxcnn.x import g\n")
    assert cycles(import_graph(back_to_the_package)) == [["jaxcnn.x", "jaxcnn.x.m"]]
    via_outside = _fake(jaxcnn__init="", jaxcnn__p__init="from jaxcnn.p import c\n",
                        jaxcnn__p__c="import jaxcnn.q\n", jaxcnn__q="from jaxcnn import p\n")
    assert cycles(import_graph(via_outside)) == [["jaxcnn.p", "jaxcnn.p.c", "jaxcnn.q"]]


def test_relative_imports_resolve():
    fake = _fake(jaxcnn__init="", jaxcnn__a__init="", jaxcnn__a__x="from ..b import y\n",
                 jaxcnn__b__init="", jaxcnn__b__y="from . import z\nfrom .z import f\n",
                 jaxcnn__b__z="")
    g = import_graph(fake)
    assert g["jaxcnn.a.x"] == {"jaxcnn.b.y"}
    assert g["jaxcnn.b.y"] == {"jaxcnn.b.z"}


def test_layer_check_catches_an_upward_import():
    fake = _fake(jaxcnn__init="", jaxcnn__forward__init="",
                 jaxcnn__forward__conv="def f():\n    from jaxcnn.nn import layers\n",
                 jaxcnn__nn__init="", jaxcnn__nn__layers="", jaxcnn__stray="")
    bad = layer_violations(import_graph(fake))
    assert any("jaxcnn.forward.conv (layer 2) imports jaxcnn.nn.layers" in b for b in bad), bad
    assert any("jaxcnn.stray belongs to no layer" in b for b in bad), bad
    assert not layer_violations({"jaxcnn.nn.layers": {"jaxcnn.forward.conv", "jaxcnn._window"}})


def test_fast_check_catches_another_importer():
    fake = _fake(jaxcnn__init="", jaxcnn__fast__init="from jaxcnn.fast import auto\n",
                 jaxcnn__fast__auto="", jaxcnn__forward__init="",
                 jaxcnn__forward__conv="from jaxcnn import fast\n",
                 jaxcnn__forward__pool="from jaxcnn.fast.auto import IMPLS\n")
    assert fast_violations(import_graph(fake)) == ["jaxcnn.forward.pool imports jaxcnn.fast.auto"]


def test_length_check_catches_long_modules_and_functions():
    def body(indent: str, n: int) -> str:
        return "".join(f"{indent}x{i} = {i}\n" for i in range(n))

    # a method of exactly the limit (def + 59 lines) passes; a function one line over fails
    src = ("class C:\n    def method(self):\n" + body(" " * 8, MAX_FUNCTION_LINES - 1)
           + "def f():\n" + body(" " * 4, MAX_FUNCTION_LINES))
    bad = length_violations(_fake(jaxcnn__m=src))
    assert len(bad) == 1 and "f (line" in bad[0], bad
    filler = "x = 1\n" * (MAX_MODULE_LINES + 1)
    assert length_violations(_fake(jaxcnn__m=filler))
    excused = f'"""Long: {LONG_MODULE_EXCUSE} it is a table."""\n' + filler
    assert not length_violations(_fake(jaxcnn__m=excused))


def test_impl_check_catches_parameters_and_fields():
    src = ("import dataclasses\n"
           "def make_step(model, *, impl='conv'): ...\n"
           "f = lambda p, impl: p\n"
           "@dataclasses.dataclass\nclass TrainConfig:\n    lr: float = 1.0\n"
           "    impl: str = 'conv'\n")
    bad = sorted(impl_parameters(src))
    assert bad == [":2 make_step(impl=...)", ":3 lambda(impl=...)", ":7 TrainConfig.impl (a field)"]
    assert not impl_parameters("class Network:\n    def with_impl(self, impl): ...\n"
                               "def f(model):\n    return model.with_impl('auto')\n")


# ----------------------------------------------------------------------------- capabilities
# What a layer can do is a field of the layer (`Layer.mixes_examples`, ...), never read off its
# kind: a user's own layer that mixes the examples must be refused as BatchNorm is.
_KIND = r"""["'](?:BatchNorm|GroupNorm|LayerNorm|Dropout)["']"""
BY_NAME = re.compile(rf"{_KIND}\s*(?:\bin\b|==|!=)|(?:\bin\b|==|!=)\s*{_KIND}")
CAPABILITY_READERS = ("jaxcnn/nn", "jaxcnn/training")


def capability_by_name(source: str) -> list[str]:
    """The lines of `source` that decide something by comparing a layer's kind string."""
    return [line.strip() for line in source.splitlines() if BY_NAME.search(line)]


def test_the_capability_finder():
    assert capability_by_name('if "BatchNorm" in kinds(layer):\n    x = 1\n')
    assert capability_by_name("ok = spec['kind'] == 'Dropout'\n")
    assert not capability_by_name('return any(layer.mixes_examples for layer in layers)\n')
    assert not capability_by_name('spec = {"kind": "BatchNorm", "eps": eps}\n')


@pytest.mark.parametrize("path", sorted(str(p.relative_to(ROOT)) for d in CAPABILITY_READERS
                                        for p in (ROOT / d).rglob("*.py")))
def test_no_capability_is_decided_by_a_layer_name(path):
    found = capability_by_name((ROOT / path).read_text())
    assert not found, f"{path}: decide by the layer fields (mixes_examples), not kind: {found}"
