"""`jaxcnn explain`: the numbers it prints are the ones the rules use, and its check can fail.

Each configuration is explained once (module-scoped cache); the test then holds the explanation
to the library itself: the geometry of `_geometry.conv` / `_geometry.pool`, the parameters of
`backward.conv.dx_conv_params` / `dw_conv_params`, dx / dw recomputed here from the JSON's
parameters against `backward.<op>`, and the rows it calls unread against the rule's exact zeros.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from jax import lax

from jaxcnn import _geometry, backward, fast
from jaxcnn.backward import conv as conv_rules
from jaxcnn.tools import explain

from helpers import rel_err

CONV = [  # op, input HxWxC, kernel, filters, stride, padding, dilation, groups
    ("conv2d", (7, 7, 3), (3, 3), 4, 2, "SAME", 1, 1),            # the issue's example
    ("conv2d", (6, 6, 1), (3, 3), 1, 1, "VALID", 1, 1),           # the worked example's conv
    ("conv2d", (7, 7, 2), (3, 3), 2, 3, "VALID", 1, 1),           # stride 3: dW crops row 6
    ("conv2d", (8, 8, 2), (1, 1), 3, 2, "VALID", 1, 1),           # 1x1/2: every other row unread
    ("conv2d", (9, 9, 2), (5, 5), 2, 1, "SAME", 1, 1),
    ("conv2d", (9, 7, 2), (5, 3), 2, (2, 1), 2, 1, 1),            # int padding, non-square
    ("conv2d", (7, 8, 2), (3, 2), 3, (1, 2), (1, 0), 1, 1),       # pair padding
    ("conv2d", (8, 7, 2), (3, 3), 2, 2, ((1, 2), (0, 1)), 1, 1),  # explicit pairs
    ("conv2d", (9, 9, 2), (3, 3), 2, 1, "SAME", 2, 1),            # dilated SAME
    ("conv2d", (9, 9, 1), (3, 3), 2, 2, "VALID", 2, 1),           # dilated and strided
    ("conv2d", (8, 9, 2), (2, 3), 2, 1, 1, (2, 1), 1),
    ("conv2d", (6, 6, 4), (3, 3), 4, 1, "SAME", 1, 2),            # groups 2
    ("conv2d", (7, 7, 3), (3, 3), 3, 2, 1, 1, 3),                 # depthwise
    ("conv2d", (7, 7, 2), (3, 3), 4, 1, "VALID", 1, 2),           # depthwise, multiplier 2
    ("conv2d", (6, 6, 2), (2, 2), 2, 2, "VALID", 1, 1),           # 2x2/2: the trap's axes
    ("conv2d", (6, 9, 2), (2, 5), 1, (2, 1), 1, (1, 2), 1),       # the trap (jax.grad aborts)
    ("conv2d", (8, 6, 3), (5, 2), 6, 2, ((1, 2), (1, 2)), 1, 3),  # the trap, depthwise
    ("conv2d", (5, 5, 1), (1, 1), 1, 1, 2, 1, 1),                 # pad > kernel: dx pads < 0
    ("conv2d", (7, 7, 1), (3, 3), 1, 3, 2, 1, 1),                 # pads 2, stride 3
    ("conv2d", (5, 5, 2), (5, 5), 2, 1, "VALID", 1, 1),           # kernel = input: 1x1 out
    ("conv2d", (9, 9, 1), (4, 4), 1, 3, "SAME", 1, 1),            # even kernel, SAME
    ("convolve2d", (7, 7, 3), (3, 3), 4, 2, "SAME", 1, 1),
    ("convolve2d", (8, 7, 2), (3, 2), 2, (2, 1), ((0, 1), (1, 0)), (1, 2), 2),
    ("convolve2d", (6, 9, 2), (2, 5), 1, (2, 1), 1, (1, 2), 1),   # the trap, true convolution
]
POOL = [  # op, input, window, stride, padding, count_include_pad
    ("max_pool", (6, 6, 1), 2, None, "VALID", True),              # the worked example: tiles
    ("max_pool", (5, 5, 2), 2, None, "VALID", True),              # tiles, last row unread
    ("max_pool", (6, 6, 2), 3, 1, "VALID", True),                 # overlapping windows
    ("max_pool", (7, 7, 1), 3, 2, "SAME", True),
    ("max_pool", (6, 5, 2), (3, 2), (1, 2), ((1, 2), (0, 1)), True),
    ("max_pool", (7, 7, 1), 2, 3, "VALID", True),                 # stride > window: gaps
    ("avg_pool", (6, 6, 2), 2, None, "VALID", True),
    ("avg_pool", (7, 7, 1), 3, 2, 1, True),
    ("avg_pool", (7, 7, 1), 3, 2, 1, False),                      # counts of real elements
    ("avg_pool", (6, 7, 2), (2, 3), 1, "SAME", False),
    ("l2_pool", (6, 6, 2), 2, None, "VALID", True),
    ("l2_pool", (7, 6, 1), 3, (2, 1), (1, 1), True),
]
_CACHE: dict = {}


def explained(cfg):
    """explain + check, once per configuration, through a JSON round trip (what --json gives)."""
    if cfg not in _CACHE:
        d = explain.explain_conv(*cfg) if cfg[0] in explain.CONV_OPS else explain.explain_pool(*cfg)
        d["check"] = explain.check(d)
        _CACHE[cfg] = json.loads(json.dumps(d))
    return _CACHE[cfg]


def tuples(v):
    return tuple(tuples(u) for u in v) if isinstance(v, list | tuple) else v


def conv_arrays(d, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(d["shapes"][k]) for k in ("x", "w", "y")]


def conv_kw(cfg):
    _, _, _, _, stride, padding, dilation, groups = cfg
    return dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def ids(cfg):
    return "-".join(str(v).replace(" ", "") for v in cfg)


@pytest.mark.parametrize("cfg", CONV, ids=ids)
def test_conv_explanation_is_the_rules(cfg):
    d = explained(cfg)
    assert d["check"]["ok"], [i for i in d["check"]["items"] if not i["ok"]]
    x, w, dy = conv_arrays(d)
    _, _, _, _, stride, padding, dilation, groups = cfg
    g = _geometry.conv(cfg[0], x, w, stride, padding, dilation, groups)
    win = g.win
    assert tuples(d["geometry"]["pads"]) == win.pads
    assert tuple(d["geometry"]["out_hw"]) == win.out_hw and list(d["shapes"]["y"]) == list(
        g.out_shape)
    assert tuple(d["geometry"]["k_eff"]) == win.eff and tuple(d["geometry"]["spread"]) == win.spread
    dxp, dwp = conv_rules.dx_conv_params(g), conv_rules.dw_conv_params(g)
    assert d["trap"]["applies"] == dxp.pop("spread_apart") == fast.traps.xla_may_abort(win)
    assert tuples_dict(d["dx_conv"]["params"]) == tuples_dict(dxp)
    assert tuples_dict(d["dw_conv"]["params"]) == tuples_dict(dwp)
    for a, e, (lo, _), h, o_s in zip(d["axes"], win.eff, win.pads, win.in_hw, win.spread):
        assert a["dx_pad"] == [e - 1 - lo, h - o_s + lo]
        assert a["dw_pad"] == [lo, o_s - h + e - 1 - lo]
    # dx, dw recomputed here from the JSON's parameters equal the rule's
    dx, dw, _ = getattr(backward, cfg[0])(dy, x, w, **conv_kw(cfg))
    conv_w = w[::-1, ::-1] if cfg[0] == "convolve2d" else w
    dwc = lax.conv_general_dilated(x, dy, **tuples_dict(d["dw_conv"]["params"]))
    assert rel_err(dwc[::-1, ::-1] if cfg[0] == "convolve2d" else dwc, dw) <= 1e-12
    if not d["trap"]["applies"]:  # the plain lhs-dilated form: the one XLA may abort on
        kh, kw, ci, co = w.shape
        G = cfg[7]
        kernel = conv_w.reshape(kh, kw, ci, G, co // G).transpose(0, 1, 3, 2, 4).reshape(
            kh, kw, ci * G, co // G)[::-1, ::-1]
        assert list(kernel.shape) == d["dx_conv"]["kernel"]["after"]
        dxc = lax.conv_general_dilated(dy, kernel, **tuples_dict(d["dx_conv"]["params"]))
        assert rel_err(dxc, dx) <= 1e-12
    assert_unread_rows_get_zero(d, np.asarray(dx))
    for a in d["axes"]:  # a negative dW high pad crops exactly rows that no window reads
        assert set(a["dw_cropped"]) <= set(a["unread"])
        assert bool(a["dw_cropped"]) == (a["dw_pad"][1] < 0)


def tuples_dict(p):
    return {k: tuples(v) for k, v in p.items()}


def assert_unread_rows_get_zero(d, dx):
    """The rows (columns) the explanation calls unread get exactly zero; every other one not."""
    for axis, a in zip((1, 2), d["axes"]):
        zero = np.all(dx == 0, axis=tuple(i for i in range(4) if i != axis))
        assert sorted(np.flatnonzero(zero).tolist()) == a["unread"], (a["axis"], a["unread"])


@pytest.mark.parametrize("cfg", POOL, ids=ids)
def test_pool_explanation_is_the_rules(cfg):
    d = explained(cfg)
    assert d["check"]["ok"], [i for i in d["check"]["items"] if not i["ok"]]
    op, hwc, window, stride, padding, include = cfg
    x = np.random.default_rng(2).standard_normal((2, *hwc))
    win = _geometry.pool(op, x, window, stride, padding)
    assert tuples(d["geometry"]["pads"]) == win.pads
    assert tuple(d["geometry"]["out_hw"]) == win.out_hw
    assert d["tiles"] == (win.stride == win.size and win.pads == ((0, 0), (0, 0)))
    assert d["overlap"] == [s < k for s, k in zip(win.stride, win.size)]
    assert d["window_area"] == win.size[0] * win.size[1]
    kw = dict(window=window, stride=stride, padding=padding)
    if op == "avg_pool":
        counts = _geometry.window_counts(win, include)[0, :, :, 0]
        assert np.array_equal(np.asarray(d["counts"]), counts)
        kw["count_include_pad"] = include
    dy = np.random.default_rng(3).standard_normal((2, *win.out_hw, hwc[2]))
    assert_unread_rows_get_zero(d, np.asarray(getattr(backward, op)(dy, x, **kw)))
    assert ("first maximum in row-major window order" in d["routing"]) == (op == "max_pool")


def test_the_issue_example_as_text(capsys):
    code = explain.main(["conv2d", "--input", "7x7x3", "--kernel", "3x3", "--filters", "4",
                         "--stride", "2", "--padding", "SAME"])
    out = capsys.readouterr().out
    assert code == 0, out
    for line in ["O = (H + lo + hi - k_eff) // s + 1 = (7 + 1 + 1 - 3) // 2 + 1 = 4",
                 "O_s = (O - 1) * s + 1 = (4 - 1) * 2 + 1 = 7",
                 "padding H: (k_eff - 1 - lo, H - O_s + lo) = (3 - 1 - 1, 7 - 7 + 1) = (1, 1)",
                 "padding W: (lo, O_s - W + k_eff - 1 - lo) = (1, 7 - 7 + 3 - 1 - 1) = (1, 1)",
                 "lax.padtype_to_pads", "jax.vjp of forward.conv2d", "every check passed"]:
        assert line in out, line
    assert max(map(len, out.splitlines())) <= 100


def test_json_is_the_whole_explanation(capsys):
    argv = ["conv2d", "--input", "6x9x2", "--kernel", "2x5", "--filters", "1", "--stride",
            "2x1", "--dilation", "1x2", "--padding", "1", "--json"]
    assert explain.main(argv) == 0
    d = json.loads(capsys.readouterr().out)
    cfg = ("conv2d", (6, 9, 2), (2, 5), 1, (2, 1), 1, (1, 2), 1)
    assert d["ok"] and d == {**explained(cfg), "ok": True}
    assert d["trap"]["applies"] and d["trap"]["axes"] == ["H"]
    assert "NumPy loop" in d["check"]["reference"]  # no jax.vjp where XLA would abort
    assert any("central difference" in i["name"] for i in d["check"]["items"])


@pytest.mark.parametrize("text", ["((1, 2), (0, 1))", "1,2,0,1", "[[1, 2], [0, 1]]"])
def test_explicit_padding_on_the_command_line(capsys, text):
    argv = ["conv2d", "--input", "8x7x2", "--kernel", "3x3", "--filters", "2", "--stride", "2",
            "--padding", text, "--json"]
    assert explain.main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {**explained(CONV[7]), "ok": True}


def test_pool_cli_and_the_tie_rule_text(capsys):
    assert explain.main(["max_pool", "--input", "6x6x1", "--window", "2"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "tile the input" in out and "first maximum in row-major window order" in out
    assert explain.main(["avg_pool", "--input", "5x5x1", "--window", "3", "--stride", "2",
                         "--padding", "1", "--exclude-pad", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["counts"] == [[4.0, 6.0, 4.0], [6.0, 9.0, 6.0], [4.0, 6.0, 4.0]]


def test_a_negative_dw_pad_names_the_rows_it_crops():
    d = explained(CONV[2])  # 7 rows, kernel 3, stride 3, VALID: O = 2, O_s = 4
    assert [a["dw_pad"] for a in d["axes"]] == [[0, -1], [0, -1]]
    assert all(a["dw_cropped"] == a["unread"] == [6] for a in d["axes"])
    text = " ".join(explain.format_text(d).split())
    assert "negative: crops input rows 6, which no window reads" in text


def test_the_trap_names_the_release_it_was_measured_on():
    d = explained(CONV[0])
    assert d["trap"]["measured_on"] == fast.traps.MEASURED_ON and not d["trap"]["applies"]


# ----------------------------------------------------------------------------- it can fail
CFG = ["conv2d", "--input", "7x7x2", "--kernel", "3x3", "--filters", "2", "--stride", "2",
       "--padding", "SAME"]


def test_a_wrong_pad_in_the_explanation_fails(capsys, monkeypatch):
    real = explain.explain_conv

    def wrong(*args, **kwargs):
        d = real(*args, **kwargs)
        d["dx_conv"]["params"]["padding"][0] = [2, 0]  # same dx shape, shifted by one row
        return d

    monkeypatch.setattr(explain, "explain_conv", wrong)
    assert explain.main(CFG) == 1
    out = capsys.readouterr().out
    assert "FAIL  the dX convolution recomputed" in out and "FAIL  dX pads worked out" in out
    assert "FAIL  dx: the rule" not in out  # the rule itself is still right


def test_a_wrong_worked_out_number_fails():
    d = explain.explain_conv("conv2d", (7, 7, 2), (3, 3), 2, 2, "SAME")
    d["axes"][1]["dw_pad"] = [1, 2]
    bad = [i["name"] for i in explain.check(d)["items"] if not i["ok"]]
    assert bad == ["dW pads worked out above = the rule's"]


def test_a_wrong_rule_parameter_fails(capsys, monkeypatch):
    real = conv_rules.dx_conv_params

    def wrong(g):
        p = real(g)
        (lo, hi), rest = p["padding"][0], p["padding"][1:]
        p["padding"] = [(lo + 1, hi - 1), *rest]  # the rule itself now shifts dx by a row
        return p

    monkeypatch.setattr(conv_rules, "dx_conv_params", wrong)
    assert explain.main(CFG) == 1
    out = capsys.readouterr().out
    assert "FAIL  dx: the rule vs jax.vjp" in out and "FAIL  dX pads worked out" in out


def test_a_wrong_pool_pad_fails():
    d = explain.explain_pool("avg_pool", (7, 7, 1), 3, 2, 1)
    d["geometry"]["pads"] = [[1, 1], [0, 2]]
    bad = {i["name"] for i in explain.check(d)["items"] if not i["ok"]}
    assert "dx routed by a NumPy loop from the numbers above vs the rule" in bad


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("argv, named", [
    (["conv2d", "--input", "7x7", "--kernel", "3", "--filters", "1"], "--input"),
    (["conv2d", "--input", "7xax3", "--kernel", "3", "--filters", "1"], "--input"),
    (["conv2d", "--input", "7x7x3", "--kernel", "0x3", "--filters", "1"], "--kernel"),
    (["conv2d", "--input", "7x7x3", "--kernel", "3", "--filters", "1", "--stride", "2x"],
     "--stride"),
    (["conv2d", "--input", "7x7x4", "--kernel", "3", "--filters", "4", "--groups", "3"],
     "groups=3 must divide the 4 input channels"),
    (["conv2d", "--input", "7x7x4", "--kernel", "3", "--filters", "3", "--groups", "2"],
     "groups=2 must divide the 3 output channels"),
    (["conv2d", "--input", "3x3x1", "--kernel", "5x5", "--filters", "1"],
     "the kernel spans (5, 5)"),
    (["conv2d", "--input", "5x5x1", "--kernel", "3", "--filters", "1", "--dilation", "3"],
     "(dilated by (3, 3))"),
    (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters", "1", "--padding", "FULL"],
     "--padding"),
    (["conv2d", "--input", "7x7x1", "--kernel", "3", "--filters", "1", "--padding", "-1"],
     "padding must be >= 0"),
    (["conv2d", "--input", "7x7x1", "--kernel", "3"], "--filters"),
    (["max_pool", "--input", "6x6x1", "--window", "2", "--padding", "2"],
     "must be smaller than the window"),
    (["avg_pool", "--input", "6x6x1", "--kernel", "2"], "--window"),
])
def test_bad_input_is_one_line_naming_the_argument(capsys, argv, named):
    assert explain.main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    assert err.startswith("jaxcnn explain: error: ") and named in err, err


def test_argparse_errors_exit_2(capsys):
    assert explain.main(["conv3d", "--input", "7x7x1"]) == 2
    assert explain.main(["conv2d", "--input", "7x7x1", "--groups", "x"]) == 2


def test_through_the_jaxcnn_command_line(capsys, monkeypatch):
    """Registered as cli.py registers it, the exit statuses and the one-line errors hold."""
    from jaxcnn.tools import cli
    monkeypatch.setitem(cli.COMMANDS, "explain", cli.Command(
        "explain a conv or pool backward rule with its numbers", explain.add_arguments,
        explain.run))
    assert cli.main(["explain", *CFG, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    assert cli.main(["explain", "conv2d", "--input", "7x7x4", "--kernel", "3", "--filters",
                     "4", "--groups", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "jaxcnn explain: error: conv2d: groups=3" in err
    assert cli.main(["explain", "conv2d", "--input", "7x7x1", "--kernel", "3", "--filters",
                     "1", "--stride", "(2, 1)"]) == 2
    assert "--stride" in capsys.readouterr().err
