"""Sizes are checked against a stated bound before anything is allocated (issue 23, item 13).

The library ops bound every shape they derive (a padded input, an output) by
`jaxcnn._bounds.MAX_ELEMENTS` (int32's largest count): past it, a ValueError names the argument
and quotes the size and the bound. Before, `forward.conv2d(x, w, padding=2**40)` aborted the
whole process inside XLA ("overflow in static extent product"), so those cases run in a child
process with a timeout: a regression fails the test instead of killing pytest. The tools bound
what they make arrays of: explain's check (`explain.MAX_*`), bench's and gradcheck's batches
(`MAX_BATCH`, int32 elements, the device's memory).
"""

from __future__ import annotations

import json
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from jaxcnn import _bounds
from jaxcnn.tools import bench, cli, explain, gradcheck

from helpers import run_child

LIMIT = f"{_bounds.MAX_ELEMENTS:,}"

# Each case: (name, the call, a fragment naming the argument). Run in one child process, where
# each must raise ValueError (in that Python process, not an abort), quoting the bound.
CHILD = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    from jaxcnn import backward as B, forward as F
    S = jax.ShapeDtypeStruct
    x, w = jnp.ones((1, 4, 4, 1)), jnp.ones((3, 3, 1, 1))
    x1, w1 = jnp.ones((1, 4, 1)), jnp.ones((3, 1, 1))
    x3, w3 = jnp.ones((1, 4, 4, 4, 1)), jnp.ones((3, 3, 3, 1, 1))
    dy = jnp.ones((1, 4, 4, 1))
    cases = {
        "conv2d padding 2**40": lambda: F.conv2d(x, w, padding=2**40),
        "conv2d padding 10**6": lambda: F.conv2d(x, w, padding=10**6),
        "conv2d pads pair": lambda: F.conv2d(x, w, padding=((2**40, 0), (0, 0))),
        "conv2d stride 2**70": lambda: F.conv2d(x, w, stride=2**70),
        "conv2d dilation 2**40": lambda: F.conv2d(x, w, dilation=2**40, padding="SAME"),
        "conv2d dilation 2**30": lambda: F.conv2d(x, w, dilation=2**30, padding="SAME"),
        "conv1d padding": lambda: F.conv1d(x1, w1, padding=2**40),
        "conv3d padding": lambda: F.conv3d(x3, w3, padding=2**12),
        "backward.conv2d padding": lambda: B.conv2d(dy, x, w, padding=2**40),
        "conv_transpose2d stride": lambda: F.conv_transpose2d(x, w, stride=2**30),
        "conv_transpose1d dilation": lambda: F.conv_transpose1d(x1, w1, dilation=2**31 - 1),
        "max_pool padding": lambda: F.max_pool(x, window=2**20, padding=2**20 - 1),
        "max_pool window": lambda: F.max_pool(x, window=2**40, padding=2**40 - 1),
        "avg_pool padding": lambda: F.avg_pool(x, window=2**20, padding=2**20 - 1),
        "l2_pool 1-D": lambda: F.l2_pool(x1, window=2**31, padding=2**31 - 1),
        "max_pool 3-D": lambda: F.max_pool(x3, window=2**11, padding=2**11 - 1),
        "backward.max_pool padding": lambda: B.max_pool(dy, x, window=2, stride=1,
                                                        padding=2**40),
        "upsample scale": lambda: F.upsample_nearest(x, scale=2**20),
        "backward.upsample scale": lambda: B.upsample_nearest(dy, x, scale=2**40),
        "dense outputs": lambda: F.dense(S((2**20, 4), "float32"), S((4, 2**12), "float32")),
        "concat channels": lambda: F.concat(S((2**20, 2**10, 2), "float32"),
                                            S((2**20, 2**10, 2), "float32")),
    }
    out = {}
    for name, call in cases.items():
        try:
            call()
            out[name] = "no error"
        except Exception as e:
            out[name] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))
""")
EXPECT = {  # the argument each message must name
    "conv2d padding 2**40": "padding 1099511627776", "conv2d padding 10**6": "padding 1000000",
    "conv2d pads pair": "padding ((1099511627776, 0), (0, 0))", "conv2d stride 2**70": "stride",
    "conv2d dilation 2**40": "dilation", "conv2d dilation 2**30": "dilation",
    "conv1d padding": "padding", "conv3d padding": "padding",
    "backward.conv2d padding": "padding", "conv_transpose2d stride": "stride (1073741824",
    "conv_transpose1d dilation": "dilation (2147483647,)", "max_pool padding": "padding 1048575",
    "max_pool window": "window", "avg_pool padding": "padding", "l2_pool 1-D": "window",
    "max_pool 3-D": "padding 2047", "backward.max_pool padding": "padding",
    "upsample scale": "scale (1048576, 1048576)", "backward.upsample scale": "scale",
    "dense outputs": "w's 4096 outputs", "concat channels": "a and b",
}


@pytest.fixture(scope="module")
def child_results() -> dict[str, str]:
    proc = run_child([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"the child died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", sorted(EXPECT))
def test_derived_sizes_are_refused_before_xla(child_results, case):
    got = child_results[case]
    assert got.startswith("ValueError: "), got
    assert EXPECT[case] in got, (EXPECT[case], got)
    assert LIMIT in got, got


def test_the_bounds_leave_ordinary_calls_alone():
    from jaxcnn import backward, forward
    x, w = np.ones((2, 8, 8, 3), np.float32), np.ones((3, 3, 3, 4), np.float32)
    assert forward.conv2d(x, w, padding=5).shape == (2, 16, 16, 4)
    assert backward.max_pool(np.ones((2, 8, 8, 3), np.float32), x, window=3, stride=1,
                             padding=1).shape == x.shape


def test_bounds_messages_name_the_argument_and_quote_the_bound():
    with pytest.raises(ValueError, match=r"op: padding 7: the padded input's size on spatial "
                                         r"axis 1 would be 2,147,483,648; it must be at most"):
        _bounds.extents("op", "padding 7", (5, 2**31), "the padded input's size")
    with pytest.raises(ValueError, match=r"shape \(2, 1073741824\), 2,147,483,648 elements"):
        _bounds.elements("op", "w", (2, 2**30), "the output")
    _bounds.elements("op", "w", (1, 2**31 - 1), "the output")  # the bound itself is allowed
    with pytest.raises(ValueError, match="stride must be at most 2,147,483,647"):
        _bounds.option("op", "stride", (1, 2**31))


def test_batch_bound_checks_cap_elements_and_memory(monkeypatch):
    args = ("tool", "--batch", 10, [(4,), (8,)], 4)
    _bounds.batch(*args, cap=10, cap_reason="why")
    with pytest.raises(ValueError, match=r"--batch 11 is past the cap of 10 \(why\)"):
        _bounds.batch("tool", "--batch", 11, [(4,)], 4, 10, "why")
    with pytest.raises(ValueError, match=r"--batch 1,024: its largest array would have shape "
                                         r"\(1024, 4194304\)"):
        _bounds.batch("tool", "--batch", 1024, [(4,), (2**22,)], 4, 2**20, "why")
    monkeypatch.setattr(_bounds, "memory_bytes", lambda: 2**20)
    with pytest.raises(ValueError, match=r"--batch 100,000 needs at least 0.1 GiB .* more than "
                                         r"the 0.0 GiB of memory"):
        _bounds.batch("tool", "--batch", 100_000, [(100,), (100,)], 4, 2**20, "why")


# ----------------------------------------------------------------------------- jaxcnn explain
EXPLAIN = {  # argv -> fragments of the one error line
    "huge input": (["conv2d", "--input", "100000x100000x1", "--kernel", "3", "--filters", "1"],
                   ["x (2, 100000, 100000, 1)", "4,194,304", "--input"]),
    "billion filters": (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters",
                         "1000000000"], ["w (3, 3, 1, 1000000000)", "--filters"]),
    "billion batch": (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters", "1",
                       "--batch", "1000000000"], ["x (1000000000, 7, 7, 1)", "--batch"]),
    "padding 10**6": (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters", "1",
                       "--padding", "1000000"], ["padding 1000000", LIMIT]),
    "padding 10**3": (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters", "1",
                       "--padding", "1000"], ["padded x (2, 2007, 2007, 1)", "--padding"]),
    "padding 2**40": (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters", "1",
                       "--padding", str(2**40)], ["padding 1099511627776", LIMIT]),
    "pool padding 2**40": (["max_pool", "--input", "7x7x1", "--window", "3", "--padding",
                            str(2**40)], ["padding 1099511627776", LIMIT]),
    "window offsets": (["max_pool", "--input", "64x64x1", "--window", "33", "--stride", "1",
                        "--batch", "1"], ["1,089 window offsets", "MAX_OFFSETS", "--window"]),
    "pool taps": (["avg_pool", "--input", "129x129x1", "--window", "32", "--stride", "1",
                   "--batch", "1", "--padding", "SAME"], ["17,040,384 tap elements", "MAX_TAPS"]),
    "conv work": (["conv2d", "--input", "256x256x64", "--kernel", "3", "--filters", "64",
                   "--batch", "1"], ["multiply-adds", "MAX_MACS"]),
}


@pytest.mark.parametrize("case", sorted(EXPLAIN))
def test_explain_refuses_sizes_before_allocating(case, capsys):
    argv, fragments = EXPLAIN[case]
    t0 = time.perf_counter()
    assert cli.main(["explain", *argv]) == 2
    assert time.perf_counter() - t0 < 30  # it refuses at once: no allocation, no set to build
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("jaxcnn explain: error: "), err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def _unread_by_set(n, k, s, dl, lo, o):
    """The former O(O k) definition: the rows no window reads."""
    read = {r * s + m * dl - lo for r in range(o) for m in range(k)}
    return [r for r in range(n) if r not in read]


def test_unread_rows_by_arithmetic_match_the_set():
    rng = np.random.default_rng(0)
    for _ in range(400):
        n, k, s, dl = (int(v) for v in rng.integers(1, 9, 4))
        lo, hi = (int(v) for v in rng.integers(0, 6, 2))
        if (k - 1) * dl + 1 > n + lo + hi:
            continue
        o = (n + lo + hi - (k - 1) * dl - 1) // s + 1
        assert explain._unread(n, k, s, dl, lo, o) == _unread_by_set(n, k, s, dl, lo, o), \
            (n, k, s, dl, lo, o)


def test_unread_rows_cost_nothing_like_the_output_size():
    t0 = time.perf_counter()  # O * k = 10**15: the set would never finish
    assert explain._unread(8, 1000, 1, 1, 2**40, 2 * 10**12) == []
    assert explain._unread(8, 1000, 1, 1, 2**40, 10**12) == list(range(8))  # runs end below 0
    assert explain._unread(10, 2, 10**9, 1, 0, 1) == list(range(2, 10))
    assert time.perf_counter() - t0 < 5


# ----------------------------------------------------------------------------- bench, gradcheck
def test_bench_refuses_a_batch_past_its_cap_before_timing(capsys):
    t0 = time.perf_counter()
    assert cli.main(["bench", "--networks", "seed:100000000"]) == 2
    err = capsys.readouterr().err
    assert "--networks seed:100000000" in err and "cap of 65,536" in err, err
    assert "matmul peak" not in err and time.perf_counter() - t0 < 60  # nothing was timed


def test_bench_refuses_per_example_gradients_past_int32():
    with pytest.raises(ValueError, match=r"--networks resnet20:60000: batch 60,000: its "
                                         r"largest array would have shape \(60000, 272474\)"):
        bench.run((("resnet20", 60000),))


def test_bench_refuses_a_batch_past_the_devices_memory(monkeypatch):
    monkeypatch.setattr(_bounds, "memory_bytes", lambda: 2**20)
    with pytest.raises(ValueError, match=r"--networks seed:4096: batch 4,096 needs at least .* "
                                         r"GiB .* more than the 0.0 GiB of memory"):
        bench.run((("seed", 4096),), per_example=False)


def test_bench_dp_batches_are_checked_where_they_are_made(capsys):
    assert cli.main(["bench", "--dp", "--networks", "seed:100000000"]) == 2
    assert "cap of 65,536" in capsys.readouterr().err


def test_gradcheck_refuses_a_batch_past_its_cap(capsys):
    assert cli.main(["gradcheck", "--model", "seed", "--batch", "100000000"]) == 2
    err = capsys.readouterr().err
    assert "batch (--batch) 100,000,000 is past the cap of 1,024" in err, err
    with pytest.raises(ValueError, match="cap of 1,024"):
        gradcheck.gradcheck("seed", batch=gradcheck.MAX_BATCH + 1)


def test_gradcheck_refuses_a_batch_past_the_devices_memory(monkeypatch):
    monkeypatch.setattr(_bounds, "memory_bytes", lambda: 2**10)
    with pytest.raises(ValueError, match=r"gradcheck: batch \(--batch\) 1,000 needs at least"):
        gradcheck.gradcheck("seed", batch=1000)
    assert jax.devices()  # nothing else was touched
