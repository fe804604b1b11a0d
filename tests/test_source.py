"""The backward rules write every derivative out: no module they reach asks JAX for one.

The modules checked are found, not listed: every module of the package that
jaxcnn/backward/__init__.py imports, transitively (the import graph of tests/test_layout.py), so
a helper added under jaxcnn/_geometry.py, jaxcnn/fast/ or a forward module the rules call is
checked as soon as a rule imports it.
"""

import ast

from test_layout import Module, import_graph, package_modules, reachable

FORBIDDEN = {"grad", "vjp", "value_and_grad", "linear_transpose", "custom_vjp", "custom_jvp",
             "jvp", "linearize", "jacfwd", "jacrev", "hessian", "closure_convert"}
RULES = "jaxcnn.backward"


def autodiff_calls(source: str) -> list[str]:
    """Names of JAX autodiff entry points referenced anywhere in `source` (attribute, name or
    import), with their line numbers."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN:
            hits.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN:
            hits.append(f"line {node.lineno}: {node.id}")
        elif isinstance(node, ast.ImportFrom | ast.Import):
            hits += [f"line {node.lineno}: import {a.name}" for a in node.names
                     if a.name.split(".")[-1] in FORBIDDEN]
    return hits


def autodiff_in_reach(modules: dict[str, Module], start: str = RULES) -> dict[str, list[str]]:
    """{module: its autodiff references} for every module `start` reaches that has any."""
    reach = reachable(import_graph(modules), start)
    return {m: hits for m in sorted(reach) if (hits := autodiff_calls(modules[m].source))}


def test_the_rules_reach_what_they_use():
    """The walk finds the helpers the rules are built on, and nothing of nn/ or training/."""
    reach = reachable(import_graph(package_modules()), RULES)
    assert {"jaxcnn.backward.conv", "jaxcnn.backward._upstream", "jaxcnn._geometry",
            "jaxcnn._window", "jaxcnn._precision", "jaxcnn.fast.products", "jaxcnn.fast.traps",
            "jaxcnn.forward.conv", "jaxcnn.forward.norm"} <= reach
    assert not any(m.startswith(("jaxcnn.nn", "jaxcnn.training")) for m in reach), reach


def test_backward_never_calls_autodiff():
    hits = autodiff_in_reach(package_modules())
    assert not hits, f"modules the backward rules import reach for autodiff: {hits}"


def test_detector_catches_each_form():
    for snippet in ["jax.grad(f)(x)", "import jax\njax.vjp(f, x)", "from jax import vjp",
                    "jax.value_and_grad(f)", "jax.linear_transpose(f, x)",
                    "@jax.custom_vjp\ndef f(x): return x", "from jax import custom_vjp as cv",
                    "jax.jvp(f, (x,), (v,))", "from jax import jacrev"]:
        assert autodiff_calls(snippet), snippet
    assert not autodiff_calls("lax.conv_general_dilated(x, w, (1, 1), 'VALID')")


def test_the_walk_catches_autodiff_in_a_helper_two_imports_away():
    fake = {
        "jaxcnn": Module("", True),
        "jaxcnn.backward": Module("from jaxcnn.backward import conv\n", True),
        "jaxcnn.backward.conv": Module("from jaxcnn import _helper\n", False),
        "jaxcnn._helper": Module("from jaxcnn.fast import tricks\n", False),
        "jaxcnn.fast": Module("", True),
        "jaxcnn.fast.tricks": Module("import jax\ndef f(g, x):\n    return jax.vjp(g, x)\n",
                                     False),
        "jaxcnn.nn": Module("import jax\nloss_grad = jax.grad\n", True),  # not reached: fine
    }
    assert autodiff_in_reach(fake) == {"jaxcnn.fast.tricks": ["line 3: .vjp"]}
