"""Hostile input to the training run, the command line, the data readers and the checkpoints.

Every user mistake ends the same way: a library call raises ValueError / TypeError (or
FileNotFoundError) whose message names the argument, path or file; the command line exits 2 with
that message on one line of stderr and no traceback. A run's finished work is never lost: a bad
resume is refused before any file of the run is touched.

Most cases call `jaxcnn.tools.cli.main` in-process with the 6x6 seed network on the synthetic bars
and one epoch (8 steps of 64), so each call that trains costs ~1 s of compiling. Several damage a
copy of one finished run, trained once for the module.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import re
import shutil
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxcnn.tools import bench, bench_torch, cli
from jaxcnn.training import checkpoint, data, steps
from jaxcnn.training import run as trainer

TINY = ["--model", "seed", "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
        "--quiet"]
CFG = trainer.TrainConfig(model="seed", data="synthetic", epochs=1, batch_size=64)
SEED_RANGE = "0..4294967295"


def quiet(_: str) -> None:
    pass


def cli_run(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except KeyboardInterrupt:  # must never escape main (here it would end the pytest session)
        pytest.fail("KeyboardInterrupt escaped cli.main")
    out, err = capsys.readouterr()
    return code, out, err


def refused(capsys, *argv, words: tuple[str, ...]) -> str:
    """Run the command line; assert exit status 2 with one line on stderr holding every word."""
    code, out, err = cli_run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.count("\n") == 1 and err.endswith("\n") and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished one-epoch run of the seed network (trained once for the module)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    trainer.fit(CFG, out, progress=False, log=quiet)
    return out


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A copy of the finished run, to damage."""
    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns(".lock"))
    return out


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ----------------------------------------------------------------------------- 1. stale resume
def test_resume_checks_the_checkpoints_own_config_not_config_json(run_dir):
    """A fresh run with --lr 1e-3 killed in its first epoch used to leave its config.json beside
    the lr 2e-3 checkpoint; --resume then continued the lr 2e-3 weights."""
    other = trainer.TrainConfig(**{**CFG.__dict__, "lr": 1e-3, "epochs": 3})
    config = json.loads((run_dir / "config.json").read_text())
    (run_dir / "config.json").write_text(json.dumps({**config, "lr": 1e-3, "epochs": 3}))
    before = (run_dir / "checkpoint.npz").read_bytes()
    with pytest.raises(ValueError, match=r"checkpoint\.npz.*--lr \(checkpoint 0\.002, now "
                                         r"0\.001\)") as e:
        trainer.fit(other, run_dir, resume=True, progress=False, log=quiet)
    assert "epochs" not in str(e.value).split("differ")[-1]  # --epochs may change
    assert (run_dir / "checkpoint.npz").read_bytes() == before


def test_resume_names_every_setting_that_differs(capsys, run_dir):
    err = refused(capsys, "train", *TINY, "--out", run_dir, "--resume", "--batch-size", "32",
                  "--lr", "0.01", words=(str(run_dir / "checkpoint.npz"), "--batch-size",
                                         "--lr", "only --epochs may change"))
    assert "--seed" not in err


def test_resume_refuses_other_data(run_dir, monkeypatch):
    real = data.load
    monkeypatch.setattr(data, "load", lambda spec, seed=0, dtype=np.float32: data.synthetic_bars(
        noise=0.2, seed=seed, dtype=dtype) if spec == "synthetic" else real(spec, seed, dtype))
    with pytest.raises(ValueError, match=r"checkpoint\.npz.*trained on other data.*--data "
                                         r"synthetic"):
        trainer.fit(CFG, run_dir, resume=True, progress=False, log=quiet)


def test_an_overwriting_run_killed_early_leaves_no_stale_checkpoint(run_dir):
    other = trainer.TrainConfig(**{**CFG.__dict__, "lr": 1e-3, "epochs": 3})
    assert trainer.fit(other, run_dir, overwrite=True, progress=False, log=quiet,
                       stop_after_steps=3) == {"stopped_at_step": 3}
    assert not (run_dir / "checkpoint.npz").exists()
    logged = []
    trainer.fit(other, run_dir, resume=True, progress=False, log=logged.append,
                stop_after_steps=1)
    assert f"no checkpoint in {run_dir}; starting from scratch" in logged


# ----------------------------------------------------------------------------- 2. corruption
def _flip_a_leaf_byte(p: Path) -> None:
    blob = bytearray(p.read_bytes())
    at = blob.index(b"leaf_00000.npy") + 200  # inside the first array's data
    blob[at] ^= 0xFF
    p.write_bytes(bytes(blob))


def _rewrite_one_leaf(p: Path) -> None:
    """A well-formed zip whose arrays no longer match the checksum in its meta."""
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["leaf_00000"] = arrays["leaf_00000"] + 1
    with open(p, "wb") as f:
        np.savez(f, **arrays)


DAMAGE = {
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "corrupt"),
    "byte flipped": (_flip_a_leaf_byte, "corrupt"),
    "checksum mismatch": (_rewrite_one_leaf, "corrupt"),
    "foreign npz": (lambda p: np.savez(p, weights=np.zeros(3)), "not a jaxcnn checkpoint"),
    "text file": (lambda p: p.write_text("hello"), "not a jaxcnn checkpoint"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_named_on_resume(capsys, run_dir, damage):
    hurt, word = DAMAGE[damage]
    hurt(run_dir / "checkpoint.npz")
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    refused(capsys, "train", *TINY, "--out", run_dir, "--resume",
            words=(str(run_dir / "checkpoint.npz"), word, "--overwrite"))
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics  # nothing touched


def test_checkpoint_load_against_another_template(finished):
    like = {"w": np.zeros(3)}
    with pytest.raises(ValueError, match=re.escape(str(finished / "checkpoint.npz")) +
                       r".*holds \d+ arrays but .* need 1"):
        checkpoint.load(finished / "checkpoint.npz", like)
    with pytest.raises(FileNotFoundError, match=r"nothing\.npz"):
        checkpoint.load(finished / "nothing.npz", like)


# ----------------------------------------------------------------------------- 3. empty splits
def _idx(a: np.ndarray) -> bytes:
    return struct.pack(f">BBBB{a.ndim}I", 0, 0, 0x08, a.ndim, *a.shape) + a.tobytes()


def _idx_dir(root: Path, n_train: int = 8, n_test: int = 4, size: int = 6) -> Path:
    rng = np.random.default_rng(0)
    sizes = {"train": n_train, "test": n_test}
    root.mkdir(parents=True, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        n = sizes[key.split("_")[0]]
        a = (rng.integers(0, 256, (n, size, size)) if key.endswith("images")
             else rng.integers(0, 10, n)).astype(np.uint8)
        (root / stem).write_bytes(_idx(a))
    return root


@pytest.mark.parametrize("split, file", [("test", "t10k-images-idx3-ubyte"),
                                         ("train", "train-images-idx3-ubyte")])
def test_an_empty_idx_split_is_refused_naming_the_file(tmp_path, split, file):
    _idx_dir(tmp_path, **{f"n_{split}": 0})
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / file)) + f".*0 images.*{split}"):
        data.load_idx_dir(tmp_path)


def test_an_empty_test_split_is_refused_before_training(tmp_path, monkeypatch):
    def no_test(spec, seed=0, dtype=np.float32):
        d = data.synthetic_bars(seed=seed, dtype=dtype)
        return data.Dataset(d.x_train, d.y_train, d.x_test[:0], d.y_test[:0], d.name, 2)

    monkeypatch.setattr(data, "load", no_test)
    logged = []
    with pytest.raises(ValueError, match=r"--data synthetic: the test split is empty"):
        trainer.fit(CFG, tmp_path / "run", progress=False, log=logged.append)
    assert logged == [] and not (tmp_path / "run" / "checkpoint.npz").exists()


# ----------------------------------------------------------------------------- 4. the CLI
def test_ctrl_c_prints_one_line_and_exits_130(capsys, tmp_path, monkeypatch):
    real = steps.make_train_step

    def interrupted_at_step_11(*args, **kw):
        step, calls = real(*args, **kw), [0]

        def wrapped(*a):
            calls[0] += 1
            if calls[0] == 11:
                raise KeyboardInterrupt
            return step(*a)
        return wrapped

    monkeypatch.setattr(steps, "make_train_step", interrupted_at_step_11)
    out = tmp_path / "run"
    code, _, err = cli_run(capsys, "train", *TINY, "--epochs", "2", "--out", out)
    assert code == 130
    assert err == (f"jaxcnn train: interrupted after step 10; the last checkpoint is epoch 1 "
                   f"({out / 'checkpoint.npz'}); --resume continues\n")


@pytest.mark.parametrize("make, words", [
    (lambda p: p.write_bytes(b""), ("empty.npy", "empty")),
    (lambda p: p.mkdir(), ("empty.npy",)),
    (lambda p: p.write_bytes(_npy_bytes()[:-20]), ("empty.npy", "truncated")),
])
def test_walkthrough_unreadable_image(capsys, tmp_path, make, words):
    make(tmp_path / "empty.npy")
    refused(capsys, "walkthrough", "--image", tmp_path / "empty.npy", words=words)


def _npy_bytes() -> bytes:
    import io
    buf = io.BytesIO()
    np.save(buf, np.zeros((6, 6)))
    return buf.getvalue()


def test_bench_against_torch_without_torch(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    monkeypatch.setattr(bench, "matmul_peak", lambda **kw: pytest.fail("bench did some work"))
    bench_torch._torch.cache_clear()
    try:
        refused(capsys, "bench", "--against", "torch", "--networks", "seed:1",
                words=("--against torch", "pip install torch"))
    finally:
        bench_torch._torch.cache_clear()


@pytest.mark.parametrize("argv", [
    ["train", *TINY, "--seed", str(2 ** 64)],
    ["train", *TINY, "--seed", "-1"],
    ["walkthrough", "--seed", "-1"],
    ["gradcheck", "--model", "seed", "--seed", "seven"],
])
def test_seed_out_of_range(capsys, tmp_path, argv):
    extra = ["--out", tmp_path / "run"] if argv[0] == "train" else []
    refused(capsys, *argv, *extra, words=("--seed", SEED_RANGE))


def test_train_config_seed_range_for_library_users(tmp_path):
    for seed, kind in [(-1, ValueError), (2 ** 32, ValueError), (1.5, TypeError)]:
        with pytest.raises(kind, match=f"--seed must be an int in {SEED_RANGE}"):
            trainer.fit(trainer.TrainConfig(**{**CFG.__dict__, "seed": seed}), tmp_path / "r",
                        progress=False, log=quiet)


@pytest.mark.parametrize("argv, words", [
    (["--rounds", "0"], ("--rounds", ">= 1", "got 0")),
    (["--rounds", "-3"], ("--rounds",)),
    (["--networks", "seed:0"], ("--networks", "seed:0")),
    (["--networks", ""], ("--networks",)),
    (["--impl", "conv,fastest"], ("--impl", "fastest")),
    (["--json", "{tmp}/no/such/dir/b.json"], ("--json", "no/such/dir")),
])
def test_bench_refuses_before_any_work(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.setattr(bench, "matmul_peak", lambda **kw: pytest.fail("bench did some work"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    refused(capsys, "bench", "--networks", "seed:1", *argv, words=words)


def test_bench_run_checks_rounds_first(monkeypatch):
    monkeypatch.setattr(bench, "matmul_peak", lambda **kw: pytest.fail("bench did some work"))
    with pytest.raises(ValueError, match="rounds must be >= 1; got 0"):
        bench.run((("seed", 1),), rounds=0)


# ----------------------------------------------------------------------------- metrics, config
def test_a_broken_metrics_line_is_named(capsys, run_dir):
    path = run_dir / "metrics.jsonl"
    path.write_text('{"kind": "epoch", "ep\n' + path.read_text())
    refused(capsys, "train", *TINY, "--out", run_dir, "--resume",
            words=(f"{path}, line 1", "not a JSON record"))


def test_a_metrics_record_without_epoch_is_named(capsys, run_dir):
    path = run_dir / "metrics.jsonl"
    path.write_text(path.read_text() + '{"kind": "step", "step": 3}\n')
    refused(capsys, "train", *TINY, "--out", run_dir, "--resume",
            words=(f"{path}, line 2", "'epoch'"))


def test_a_partial_last_metrics_line_is_dropped_on_resume(capsys, run_dir):
    path = run_dir / "metrics.jsonl"
    good = path.read_text()
    path.write_text(good + '{"kind": "step", "step": 10, "epo')  # a crash mid-write
    code, out, err = cli_run(capsys, "train", *TINY, "--out", run_dir, "--resume")
    assert code == 0, err
    assert path.read_text() == good
    assert f"dropped the partial last line 2 of {path}" in out


def test_a_corrupt_config_json_does_not_block_resume(capsys, run_dir):
    (run_dir / "config.json").write_text('{"model": "se')
    code, out, err = cli_run(capsys, "train", *TINY, "--out", run_dir, "--resume")
    assert code == 0, err
    assert f"{run_dir / 'config.json'}" in out and "line 1" in out
    assert json.loads((run_dir / "config.json").read_text())["model"] == "seed"


# ----------------------------------------------------------------------------- 5. --out
def test_a_second_run_on_a_locked_directory_names_the_holder(capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with open(out / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("4242\n")
        f.flush()
        refused(capsys, "train", *TINY, "--out", out,
                words=(str(out), "pid 4242", "another jaxcnn run"))
    assert not (out / "metrics.jsonl").exists()


def test_a_rerun_without_resume_does_not_truncate_a_run(capsys, run_dir):
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    refused(capsys, "train", *TINY, "--out", run_dir,
            words=(str(run_dir), "--resume", "--overwrite"))
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    refused(capsys, "train", *TINY, "--out", run_dir, "--resume", "--overwrite",
            words=("--overwrite", "--resume"))
    code, _, err = cli_run(capsys, "train", *TINY, "--out", run_dir, "--overwrite")
    assert code == 0, err


def test_resume_without_a_checkpoint_says_it_starts_from_scratch(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = cli_run(capsys, "train", *TINY, "--out", out, "--resume")
    assert code == 0, err
    assert stdout.splitlines()[0] == f"no checkpoint in {out}; starting from scratch"


class _ClosedPipe:
    def write(self, s: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_does_not_stop_training(tmp_path, monkeypatch):
    """`jaxcnn train | head -1`: the reader leaves after the first line; training goes on."""
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    out = tmp_path / "run"
    assert cli.main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    assert checkpoint.read_meta(out / "checkpoint.npz")["epoch"] == 2
    records = [json.loads(s) for s in lines(out / "metrics.jsonl")]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]


def test_run_files_honour_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        trainer.fit(CFG, tmp_path / "run", progress=False, log=quiet)
    finally:
        os.umask(old)
    for name in ("checkpoint.npz", "config.json", "metrics.jsonl", "curves.png"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o640, name


FAKE_BENCH = {"machine": {"device": "cpu", "backend": "cpu", "cores": 2, "jax": jax.__version__},
              "precision": "highest", "matmul_peak_gflops": 1.0, "networks": []}


def test_bench_writes_only_the_files_asked_for(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "run", lambda *a, **kw: FAKE_BENCH)
    code, out, _ = cli_run(capsys, "bench", "--networks", "seed:1")
    assert code == 0 and "Machine: cpu" in out and list(tmp_path.iterdir()) == []
    code, out, _ = cli_run(capsys, "bench", "--networks", "seed:1", "--json", "b.json")
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]
    assert json.loads((tmp_path / "b.json").read_text()) == FAKE_BENCH


# ----------------------------------------------------------------------------- 6. IDX reader
def _gzip_stream(header: bytes, zeros: int) -> bytes:
    """gzip of header + `zeros` zero bytes, compressed piecewise (never all in memory)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [z.compress(header)]
    chunk = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(z.compress(chunk))
    return b"".join([*parts, z.flush()])


def _peak_mib(fn) -> float:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak / 2 ** 20


def test_idx_gzip_bomb_is_read_no_further_than_its_header_declares(tmp_path):
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(_gzip_stream(struct.pack(">BBBBI", 0, 0, 8, 1, 4), 64 << 20))  # 64 MiB of 0
    assert p.stat().st_size < 200_000

    def read():
        with pytest.raises(ValueError, match=re.escape(str(p)) + ".*trailing bytes after IDX "
                                             "data: expected 4 payload bytes"):
            data.read_idx(p)

    assert _peak_mib(read) < 8


def test_idx_raw_file_with_huge_trailing_data_is_not_read_whole(tmp_path):
    p = tmp_path / "x.idx"
    with open(p, "wb") as f:
        f.write(struct.pack(">BBBBI", 0, 0, 8, 1, 4) + bytes(4))
        f.truncate(32 << 20)

    def read():
        with pytest.raises(ValueError, match=re.escape(str(p)) + ".*trailing bytes.*expected 4 "
                                             f"payload bytes .*got {(32 << 20) - 8}"):
            data.read_idx(p)

    assert _peak_mib(read) < 8


@pytest.mark.parametrize("gz", [False, True])
def test_idx_declaring_an_absurd_size_is_refused_unread(tmp_path, gz):
    header = struct.pack(">BBBB3I", 0, 0, 0x0E, 3, 2 ** 31, 2 ** 31, 2 ** 31)
    p = tmp_path / "huge.idx"
    p.write_bytes(gzip.compress(header + bytes(64)) if gz else header + bytes(64))
    with pytest.raises(ValueError, match=re.escape(str(p)) + r".*declares shape \(2147483648, "
                                         r"2147483648, 2147483648\) of float64.*max_bytes"):
        data.read_idx(p)


def test_idx_gzip_declaring_more_than_it_holds(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(struct.pack(">BBBB3I", 0, 0, 8, 3, 1024, 1024, 1024) + bytes(10)))
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*truncated IDX data: expected "
                                         "1073741824 payload bytes .*got 10"):
        data.read_idx(p)


@pytest.mark.parametrize("payload, words", [
    (b"", "not an IDX file"),
    (b"\0\0\x08", "not an IDX file"),
    (b"\0\0\x08\x03\0\0\0\x02\0\0", "truncated IDX header: 3 dimensions need 16"),
    (b"\x1f\x8bnot really gzip at all", "corrupt or truncated gzip"),
    (gzip.compress(b"", mtime=0), "not an IDX file"),
    (b"\0\0\x08\x00", "dimension count is 0"),
])
def test_idx_malformed_headers(tmp_path, payload, words):
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(payload)
    with pytest.raises(ValueError, match=re.escape(str(p)) + ".*" + re.escape(words)):
        data.read_idx(p)


def test_idx_directory_as_a_file(tmp_path):
    (tmp_path / "x.idx").mkdir()
    with pytest.raises(IsADirectoryError, match=r"x\.idx"):
        data.read_idx(tmp_path / "x.idx")


def test_idx_label_out_of_range_and_float_images(tmp_path):
    _idx_dir(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(_idx(np.array([0, 1, 255, 3, 4, 5, 6, 7], np.uint8)))
    with pytest.raises(ValueError, match=re.escape(str(labels)) + ".*label value 255 at index 2"):
        data.load_idx_dir(tmp_path)
    _idx_dir(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte"
    images.write_bytes(struct.pack(">BBBB3I", 0, 0, 0x0D, 3, 4, 6, 6) + bytes(4 * 144))
    with pytest.raises(ValueError, match=re.escape(str(images)) + ".*3-D uint8.*float32"):
        data.load_idx_dir(tmp_path)


def test_train_on_a_broken_idx_directory_exits_2(capsys, tmp_path):
    _idx_dir(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x09")
    refused(capsys, "train", "--model", "seed", "--data", f"mnist:{tmp_path / 'mnist'}",
            "--out", tmp_path / "run", "--quiet",
            words=(str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte"), "truncated"))


# ----------------------------------------------------------------------------- other arguments
@pytest.mark.parametrize("argv, words", [
    (["train", *TINY, "--devices", "0"], ("--devices", ">= 1")),
    (["train", *TINY, "--devices", "99"], ("--devices", "99")),
    (["train", *TINY, "--lr", "inf"], ("--lr", "inf")),
    (["train", *TINY, "--clip", "nan"], ("clip", "nan")),
    (["train", *TINY, "--batch-size", "100000"], ("--batch-size 100000",)),
    (["gradcheck", "--model", "seed", "--batch", "0"], ("--batch",)),
    (["gradcheck", "--model", "seed", "--jitter", "nan"], ("--jitter", "nan")),
    (["gradcheck", "--model", "seed", "--fd-per-leaf", "-1"], ("--fd-per-leaf",)),
    (["walkthrough", "--label", "2"], ("0 or 1",)),
    (["walkthrough", "--plot", "{tmp}/no/such/dir/w.png"], ("--plot", "no/such/dir")),
])
def test_bad_arguments_exit_2(capsys, tmp_path, argv, words):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    extra = ["--out", tmp_path / "run"] if argv[0] == "train" else []
    refused(capsys, *argv, *extra, words=words)


def test_out_is_a_file(capsys, tmp_path):
    (tmp_path / "taken").write_text("x")
    refused(capsys, "train", *TINY, "--out", tmp_path / "taken", words=(str(tmp_path / "taken"),))


def test_train_help_shows_defaults(capsys):
    code, out, _ = cli_run(capsys, "train", "--help")
    assert code == 0
    flat = " ".join(out.split())
    for default in ("(default: 0.002)", "(default: 40)", "(default: lenet5-digits)",
                    "(default: runs/train)", "(default: cosine)"):
        assert default in flat, default
    assert "(default: None)" not in flat and "default: all" in flat


def test_the_device_count_used_is_recorded(finished):
    n = len(jax.local_devices())
    assert json.loads((finished / "config.json").read_text())["devices"] == n
    assert checkpoint.read_meta(finished / "checkpoint.npz")["config"]["devices"] == n


def test_no_progress_bar_carriage_returns_when_not_a_terminal(capsys, tmp_path):
    logged = []
    trainer.fit(CFG, tmp_path / "run", progress=True, log=logged.append)
    assert "\r" not in capsys.readouterr().err
    assert any(s.startswith("epoch 1: train loss") for s in logged)
