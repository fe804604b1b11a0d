"""The README's Python runs as written: every ```python block, each on its own in a fresh
namespace; and every repository file the README, docs/design.md and the package's sources name
exists."""

import contextlib
import glob
import io
import os
import re
import sys
from pathlib import Path

import pytest

from helpers import run_child

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
    source = next(src for _, src in BLOCKS if "jaxcnn.manual_grad" in src and "labels" in src)
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


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of every fenced block of a markdown text."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text,
                                                          re.S | re.M)]


def test_the_walkthrough_excerpts_are_real_output():
    """The README's walkthrough blocks (`$ jaxcnn walkthrough ...`): every line but the elisions
    ("...") and the prompt is a line that the command on the `$` line prints, in the same order.
    Run as a user runs it, without the test run's XLA flags (they move the last bit of some
    differences: 1e-16 instead of 0)."""
    excerpts = [body for info, body in fenced_blocks(README.read_text())
                if body.startswith("$ jaxcnn walkthrough")]
    assert len(excerpts) >= 2, "the seed and the residual walkthrough excerpts"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    for excerpt in excerpts:
        argv = excerpt.splitlines()[0].split()[2:]  # after "$ jaxcnn"
        proc = run_child([sys.executable, "-m", "jaxcnn.tools.cli", *argv], env=env,
                         capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        real = [_rounding(line) for line in proc.stdout.splitlines()]
        at = 0
        for line in map(_rounding, excerpt.splitlines()[1:]):
            if line.strip() in ("", "..."):
                continue
            assert line in real[at:], f"{argv}: not in the real output (in order): {line!r}"
            at = real.index(line, at) + 1


# "max |manual - autodiff| = 1.1e-16", a |diff| column: the last bit of a float64 difference
# moves with the XLA version (0.0e+00 on jaxlib 0.12.1 where 0.10.2 prints 1.1e-16), so every
# such number below 1e-14 reads alike; a larger one must match as printed
_SCI = re.compile(r"(?<![\w.])\d\.\de[+-]\d\d\b")


def _rounding(line: str) -> str:
    return _SCI.sub(lambda m: "<rounding>" if float(m.group()) < 1e-14 else m.group(), line)


def test_the_command_synopsis_names_real_options():
    """The README's command synopsis: every subcommand exists and every --flag it shows is one
    of that subcommand's options."""
    from jaxcnn.tools import cli
    synopsis = next(body for info, body in fenced_blocks(README.read_text())
                    if info == "bash" and body.startswith("jaxcnn train"))
    parser, commands = cli.build_parser(), {}
    for line in synopsis.splitlines():
        words = line.split()
        if words and words[0] == "jaxcnn":
            name = words[1]
        commands.setdefault(name, set()).update(re.findall(r"--[\w-]+", line))
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse's subparsers
    assert set(commands) == set(sub.choices), "the synopsis lists every subcommand"
    for name, flags in commands.items():
        known = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert flags <= known, f"jaxcnn {name}: {sorted(flags - known)} are not options"
