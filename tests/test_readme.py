"""The README's Python runs as written: every ```python block, each on its own in a fresh
namespace; and every repository file the README, docs/design.md and the package's sources name
exists."""

import contextlib
import glob
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = (README, ROOT / "docs" / "design.md")
# a path inside the repository: one of its top-level folders, then at least one more part
PATH = re.compile(r"(?<![\w./-])((?:\.ci|docs|experiments|jaxcnn|tests_torch|tests)/"
                  r"[\w.{},*/-]*[\w}*])")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, source) of every ```python block of a markdown text."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1))
            for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def mentioned_paths(text: str) -> list[str]:
    """The repository paths a text names, braces expanded: `a.{md,json}` -> a.md, a.json."""
    out = []
    for p in PATH.findall(text):
        m = re.search(r"\{([^}]*)\}", p)
        out += ([p[:m.start()] + alt + p[m.end():] for alt in m.group(1).split(",")] if m
                else [p])
    return out


BLOCKS = python_blocks(README.read_text())


def run_block(source: str) -> dict:
    namespace = {"__name__": "__readme__"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(source, str(README), "exec"), namespace)
    return namespace


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 1
    text = "text\n```python\nx = 1\n```\nmore\n```bash\nls\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n")]


@pytest.mark.parametrize("line, source", BLOCKS, ids=[f"line{n}" for n, _ in BLOCKS])
def test_readme_block_runs(line, source):
    run_block(source)


def test_manual_grad_of_a_fresh_seed_cnn_takes_the_readme_params():
    """`jaxcnn.manual_grad(models.seed_cnn(), params, x, labels)` with the README's inputs."""
    source = next(src for _, src in BLOCKS if "jaxcnn.manual_grad(" in src and "labels" in src)
    ns = run_block(source + "\nresult = jaxcnn.manual_grad(models.seed_cnn(), params, x, labels)\n")
    loss, grads = ns["result"]
    assert loss.shape == () and grads["conv"]["w"].shape == (3, 3, 1, 1)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_file_named_exists(doc):
    paths = mentioned_paths(doc.read_text())
    missing = [p for p in paths if not glob.glob(str(ROOT / p))]
    assert not missing, f"{doc.name} names files that do not exist: {missing}"


def test_every_file_the_code_names_exists():
    missing = [(str(f.relative_to(ROOT)), p) for f in sorted((ROOT / "jaxcnn").rglob("*.py"))
               for p in mentioned_paths(f.read_text()) if not glob.glob(str(ROOT / p))]
    assert not missing, f"(module, the file it names that does not exist): {missing}"


def test_path_finder_sees_the_forms_used():
    text = ("see [docs](docs/design.md), `experiments/results/bench_cpu.{md,json}` and "
            "tests/test_backward.py; runs/train is not in the repository.")
    assert mentioned_paths(text) == ["docs/design.md", "experiments/results/bench_cpu.md",
                                     "experiments/results/bench_cpu.json",
                                     "tests/test_backward.py"]
