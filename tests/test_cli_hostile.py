"""The command line against a newcomer's slips and a hostile tester's inputs (issue 23, items 9,
10, 15, 16 and 17): `--version`, the walkthrough's label, the DP refusal of a BatchNorm model in
the command line's terms, XLA's log lines, the DP settings checked before any training (epsilon
JSON throughout), exit statuses when the reader of the output has gone, `--model module:function`
refusing what is not a model builder without calling it, and a resume that changes --epochs.

The command-line cases run `python -m jaxcnn.tools.cli` in a child process (tests/helpers.py's
`run_child`, or conftest's `children` fixture where the test talks to it) with the 6x6 seed
network on the synthetic bars; the library cases call `jaxcnn.training` directly.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn.nn import lookup
from jaxcnn.training import checkpoint, dp, rundir
from jaxcnn.training import run as trainer

from helpers import CHILD_TIMEOUT, run_child

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--model", "seed", "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
        "--quiet"]
SMALL = dict(model="seed", data="synthetic", epochs=1, batch_size=64, lr=0.05)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",
                                                            "JAX_LOGGING_LEVEL")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def cli(*argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m jaxcnn.tools.cli ARGV` in a child process, stdin /dev/null."""
    return run_child([sys.executable, "-m", "jaxcnn.tools.cli", *map(str, argv)], cwd=cwd,
                     env=_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True)


# A hang guard for a child that must not read its stdin: it is refused before any compile (~3 s
# on an idle 2-core machine, 10x that on a busy one), and a child that waits for input fails the
# test here instead of after CHILD_TIMEOUT.
STDIN_GUARD = 120


def cli_stdin_open(children, *argv, cwd: Path) -> subprocess.CompletedProcess:
    """`cli`, but with stdin a pipe this process holds open: a child that reads it would wait."""
    proc = children([sys.executable, "-m", "jaxcnn.tools.cli", *map(str, argv)], cwd=cwd,
                    env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=STDIN_GUARD)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{' '.join(map(str, argv))}: still running after {STDIN_GUARD} s (waiting "
                    f"for input?)")
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.read(),
                                       proc.stderr.read())


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2 and one line on stderr holding every word, no traceback."""
    err = done.stderr
    assert done.returncode == 2, (done.returncode, done.stdout, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def strict_json(line: str) -> dict:
    """json.loads refusing Infinity and NaN, which are not JSON."""
    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")
    return json.loads(line, parse_constant=refuse)


# ----------------------------------------------------------------------------- 9. newcomer
def test_version_prints_the_package_version():
    import jaxcnn
    done = cli("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"jaxcnn {jaxcnn.__version__}\n"


def test_walkthrough_label_help_shows_an_int_choice():
    done = cli("walkthrough", "--help")
    assert done.returncode == 0, done.stderr
    help_text = " ".join(done.stdout.split())
    assert "--label {0,1} the true label Y, 0 or 1 (seed block only; default: 1)" in help_text
    assert "1.0" not in help_text


def test_dp_refusal_of_resnet20_names_the_command_line_model(tmp_path):
    err = refused(cli("train", "--model", "resnet20", "--data", "digits32", "--dp-clip", "1",
                      "--dp-noise", "1", "--out", tmp_path / "run", "--quiet"),
                  "--model resnet20 has BatchNorm", "--model resnet20-gn")
    assert "norm=" not in err and "resnet20(" not in err


FOLD = """
import jax, jax.numpy as jnp, numpy as np
def fold(seed):  # constants only: XLA folds the products at compile time, 3.1 s for the two in
    # XLA's HLO evaluator on the 2-core machine (XLA notes any fold past 1 s)
    c = np.random.default_rng(seed).random((500, 500), np.float32)
    def f(x):
        k = jnp.asarray(c)
        for _ in range(2):
            k = jnp.tanh(k @ k.T / 500)
        return x + k.sum()
    jax.jit(f)(1.0).block_until_ready()
"""


# Whether the fold above makes XLA log its note, per jaxlib (measured with XLA's default flags
# on the 2-core machine). 0.12.1 no longer folds these products at compile time (the jit
# takes 0.1 s), so it logs nothing to silence. A jaxlib not listed fails the test: measure it.
FOLD_LOGS = {"0.10.2": True, "0.12.0.1": True, "0.12.1": False}


def test_xla_log_lines_stay_off_a_program_run(tmp_path):
    """The "Constant folding an instruction is taking > 1s" note XLA logs at ERROR level: a child
    folds constants (XLA logs it, on the jaxlibs that fold them: FOLD_LOGS), runs `main()` as
    the `jaxcnn` script does (here `--version`), folds again: only the first fold may log."""
    installed = version("jaxlib")
    assert installed in FOLD_LOGS, f"jaxlib {installed}: measure whether FOLD logs, add it"
    script = FOLD + textwrap.dedent("""
        import sys
        from jaxcnn.tools import cli
        fold(0)
        print("-- main --", file=sys.stderr, flush=True)
        sys.argv = ["jaxcnn", "--version"]
        assert cli.main() == 0
        assert jax.config.jax_logging_level == "CRITICAL"
        fold(1)
    """)
    env = _env()
    env.pop("XLA_FLAGS", None)  # XLA's own defaults, as a user has them
    done = run_child([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, after = done.stderr.split("-- main --")
    assert ("Constant folding" in before) == FOLD_LOGS[installed], (
        f"jaxlib {installed}: the unsilenced fold's log changed (FOLD_LOGS): {before!r}")
    assert "Constant folding" not in after and "slow_operation_alarm" not in after, after


# ----------------------------------------------------------------------------- 10. DP settings
def test_dp_help_gives_settings_that_work():
    text = " ".join(cli("train", "--help").stdout.split())
    assert "cnn1d on signals, 5 epochs, --lr 5e-2 --dp-clip 1 --dp-noise 1.1" in text, text


@pytest.mark.slow
def test_the_documented_dp_settings_learn_signals(tmp_path):
    """The settings the --dp-noise help gives: 93-95% (seeds 0-2) where --lr 2e-3 gave 47%."""
    done = cli("train", "--model", "cnn1d", "--data", "signals", "--epochs", "5",
               "--lr", "5e-2", "--dp-clip", "1", "--dp-noise", "1.1",
               "--out", tmp_path / "run", "--quiet")
    assert done.returncode == 0, done.stderr
    last = [strict_json(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"kind": "epoch"' in s][-1]
    assert last["test_accuracy"] >= 0.9 and last["epsilon"] < 2.6, last


# ----------------------------------------------------------------------------- 15. DP arguments
@pytest.mark.parametrize("flags, words", [
    (["--dp-clip", "inf", "--dp-noise", "1"], ("--dp-clip", "finite", "inf")),
    (["--dp-clip", "nan", "--dp-noise", "1"], ("--dp-clip", "nan")),
    (["--dp-clip", "1", "--dp-noise", "1e-300"], ("--dp-noise", "1e-300", "1e-100..100")),
    (["--dp-clip", "1", "--dp-noise", "1e6"], ("--dp-noise", "1e-100..100")),
    (["--dp-delta", "1e-6"], ("--dp-delta", "DP-SGD runs only")),
    (["--dp-delta", "1e-5"], ("--dp-delta", "DP-SGD runs only")),  # the default, given
    (["--dp-clip", "1e-40", "--dp-noise", "1"], ("--dp-clip", "float32")),
])
def test_bad_dp_arguments_are_refused_before_training(tmp_path, flags, words):
    out = tmp_path / "run"
    refused(cli("train", *TINY, *flags, "--out", out), *words)
    assert not (out / "metrics.jsonl").exists()


def test_no_noise_trains_and_writes_json_with_a_note(tmp_path):
    out = tmp_path / "run"
    lines = []
    trainer.fit(trainer.TrainConfig(**SMALL, dp_clip=1.0, dp_noise=0.0), out, progress=False,
                log=lines.append)
    epochs = [strict_json(s) for s in (out / "metrics.jsonl").read_text().splitlines()
              if '"kind": "epoch"' in s]
    assert epochs and all(e["epsilon"] is None and "no privacy" in e["privacy"] for e in epochs)
    assert any("no privacy" in s and "epsilon is infinite" in s for s in lines), lines
    assert checkpoint.read_meta(out / "checkpoint.npz")["epoch"] == 1


def test_an_accountant_failure_stops_the_run_before_training(tmp_path, monkeypatch):
    """Whatever the accountant cannot do is found before the first step (it is asked for the
    run's last step), so no epoch's record can fail after its training."""
    def broken(*args, **kwargs):
        raise ZeroDivisionError("float division by zero")
    monkeypatch.setattr(dp, "epsilon", broken)
    with pytest.raises(ValueError, match=r"--dp-noise 1\.1: the privacy accountant fails"):
        trainer.fit(trainer.TrainConfig(**SMALL, dp_clip=1.0, dp_noise=1.1), tmp_path / "run",
                    progress=False, log=lambda s: None)
    assert not (tmp_path / "run").exists()


def test_the_accountant_answers_across_the_whole_noise_range(caplog):
    """NOISE_RANGE is where dp-accounting's RDP accountant answers cleanly (no exception, no
    warning logged, a finite epsilon) from sample rate 1e-9 to 1, 1 to 1e12 steps; just outside
    it, epsilon refuses."""
    low, high = dp.NOISE_RANGE
    with caplog.at_level("WARNING"):
        for sigma in (low, 1.0, high):
            for q in (1e-9, 1e-3, 1.0):
                for steps in (1, 10**12):
                    assert math.isfinite(dp.epsilon(sigma, q, steps, 1e-5)), (sigma, q, steps)
    assert not caplog.records, [r.getMessage()[:200] for r in caplog.records]
    for sigma in (low / 10, high * 10, 1e-300, math.inf, math.nan):
        with pytest.raises(ValueError, match="noise_multiplier"):
            dp.epsilon(sigma, 0.01, 10, 1e-5)
    with pytest.raises(ValueError, match=r"PLD accountant needs noise_multiplier >= 0\.1"):
        dp.epsilon(1e-3, 0.01, 10, 1e-5, accountant="pld")


@pytest.mark.parametrize("steps", [2.5, True, -1, "3", None])
def test_epsilon_takes_a_whole_number_of_steps(steps):
    with pytest.raises(ValueError, match="steps must be an int >= 0"):
        dp.epsilon(1.1, 0.01, steps, 1e-5)


def test_epsilon_takes_numpy_ints():
    assert dp.epsilon(1.1, 0.01, np.int64(10), 1e-5) == dp.epsilon(1.1, 0.01, 10, 1e-5)


def test_library_refuses_a_delta_without_dp():
    with pytest.raises(ValueError, match="--dp-delta 1e-06 applies to DP-SGD runs only"):
        trainer.TrainConfig(**SMALL, dp_delta=1e-6).validate()
    with pytest.raises(ValueError, match="--dp-clip: clip_norm must be a finite number > 0"):
        trainer.TrainConfig(**SMALL, dp_clip=math.inf, dp_noise=1.0).validate()


# ----------------------------------------------------------------------------- 16. exit statuses
def test_a_diverged_run_exits_1_when_its_reader_has_gone(tmp_path, children):
    """`jaxcnn train ... 2>&1 | head -1`: the reader takes the first line ("no checkpoint in
    ...") and goes; the divergence message then meets a closed pipe, and the exit status must
    still say the run stopped."""
    proc = children([sys.executable, "-m", "jaxcnn.tools.cli", "train", *TINY, "--epochs", "2",
                     "--optimizer", "sgd", "--lr", "1e30", "--out", str(tmp_path / "run"),
                     "--resume"], env=_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=CHILD_TIMEOUT) == 1, first
    assert first.startswith("no checkpoint in"), first


MODULES = {
    "bad_syntax.py": "def build(:\n    pass\n",
    "raises_on_import.py": "raise RuntimeError('boom at import')\n",
    "asks_at_import.py": "NAME = input('model? ')\n",
    "builders.py": textwrap.dedent("""
        import json
        from json import loads
        from jaxcnn.nn.models import seed_cnn

        def needs_args(width, depth=2):
            return seed_cnn()

        def asks():
            input("width? ")
            return seed_cnn()

        def raises():
            raise KeyError("no such layer")

        def not_a_network():
            return 42

        class Builder:
            pass

        CONSTANT = 3
    """),
}


@pytest.fixture
def spec_dir(tmp_path) -> Path:
    """A directory holding MODULES."""
    for name, source in MODULES.items():
        (tmp_path / name).write_text(source)
    return tmp_path


@pytest.mark.parametrize("spec, words", [
    ("os:system", ("--model os:system", "'system' is a built-in function")),
    ("builtins:input", ("--model builtins:input", "'input' is a built-in function")),
    ("json:loads", ("--model json:loads", "loads() needs the argument(s) s")),
    ("builders:needs_args", ("needs_args() needs the argument(s) width",)),
    ("bad_syntax:build", ("module 'bad_syntax' has a syntax error", "bad_syntax.py, line 1")),
    ("raises_on_import:build", ("importing module 'raises_on_import' raised RuntimeError: boom",)),
    ("asks_at_import:build", ("importing module 'asks_at_import' raised EOFError",)),
])
def test_a_model_spec_that_is_not_a_builder_exits_2(spec_dir, children, spec, words):
    """One line, exit status 2, nothing called but a Python function of the named module that
    needs no arguments, and stdin never read: it is a pipe the test holds open, so a read would
    wait."""
    refused(cli_stdin_open(children, "gradcheck", "--model", spec, cwd=spec_dir), *words)


@pytest.mark.parametrize("spec, words", [
    ("builders:loads", "'loads' is defined in module 'json', not in 'builders'"),
    ("builders:seed_cnn", "'seed_cnn' is defined in module 'jaxcnn.nn.models'"),
    ("builders:Builder", "'Builder' is a class, not a Python function"),
    ("builders:CONSTANT", "'CONSTANT' is an object of type int, not a Python function"),
    ("builders:asks", "asks() raised EOFError"),
    ("builders:raises", "raises() raised KeyError: 'no such layer'"),
    ("builders:not_a_network", "not_a_network() returned int, not a jaxcnn.nn.network.Network"),
])
def test_lookup_refuses_what_is_not_a_builder(spec_dir, monkeypatch, spec, words):
    """The same refusals from the library (in this process: its stdin is left unread too)."""
    monkeypatch.chdir(spec_dir)
    monkeypatch.setattr(sys, "stdin", None)  # a read of the real stdin would fail the test
    try:
        with pytest.raises(ValueError) as info:
            lookup.model(spec)
    finally:
        sys.modules.pop("builders", None)
    assert words in str(info.value) and f"--model {spec}" in str(info.value)
    assert "\n" not in str(info.value)


def test_lookup_still_builds_a_module_function(tmp_path, monkeypatch):
    (tmp_path / "good_builders.py").write_text(
        "from jaxcnn.nn import models\n\ndef build(depth=1, *rest, **options):\n"
        "    return models.seed_cnn()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert lookup.model("good_builders:build").name == "seed_cnn"
    finally:
        sys.modules.pop("good_builders", None)


# ----------------------------------------------------------------------------- 17. resume epochs
def test_resume_refuses_more_epochs_under_the_cosine_schedule(tmp_path):
    out = tmp_path / "run"
    trainer.fit(trainer.TrainConfig(**SMALL), out, progress=False, log=lambda s: None)
    before = (out / "checkpoint.npz").read_bytes()
    with pytest.raises(rundir.RunDirError) as info:
        trainer.fit(trainer.TrainConfig(**{**SMALL, "epochs": 2}), out, resume=True,
                    progress=False, log=lambda s: None)
    message = str(info.value)
    for words in ("--epochs 2", "cosine", "--epochs 1", "resume with --epochs 1", "--overwrite",
                  "--schedule constant"):
        assert words in message, (words, message)
    assert (out / "checkpoint.npz").read_bytes() == before


def test_resume_with_more_epochs_under_a_constant_schedule_is_uninterrupted(tmp_path):
    """With no schedule over the epochs, 1 epoch resumed to 2 ends bit-identical to 2 epochs."""
    constant = {**SMALL, "schedule": "constant"}
    trainer.fit(trainer.TrainConfig(**constant), tmp_path / "cut", progress=False,
                log=lambda s: None)
    resumed = trainer.fit(trainer.TrainConfig(**{**constant, "epochs": 2}), tmp_path / "cut",
                          resume=True, progress=False, log=lambda s: None)
    whole = trainer.fit(trainer.TrainConfig(**{**constant, "epochs": 2}), tmp_path / "whole",
                        progress=False, log=lambda s: None)
    jax.tree.map(np.testing.assert_array_equal, resumed["params"], whole["params"])
