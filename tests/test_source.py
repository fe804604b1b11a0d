"""The manual backward module writes every rule out: it never asks JAX for a derivative."""

import ast
import inspect

import jaxcnn.backward

FORBIDDEN = {"grad", "vjp", "value_and_grad", "linear_transpose", "custom_vjp", "custom_jvp",
             "jvp", "linearize", "jacfwd", "jacrev", "hessian", "closure_convert"}


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


def test_backward_never_calls_autodiff():
    hits = autodiff_calls(inspect.getsource(jaxcnn.backward))
    assert not hits, f"jaxcnn/backward.py reaches for autodiff: {hits}"


def test_detector_catches_each_form():
    for snippet in ["jax.grad(f)(x)", "import jax\njax.vjp(f, x)", "from jax import vjp",
                    "jax.value_and_grad(f)", "jax.linear_transpose(f, x)",
                    "@jax.custom_vjp\ndef f(x): return x", "from jax import custom_vjp as cv"]:
        assert autodiff_calls(snippet), snippet
    assert not autodiff_calls("lax.conv_general_dilated(x, w, (1, 1), 'VALID')")
