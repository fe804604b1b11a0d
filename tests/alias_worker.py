"""The in-place aliasing trap of XLA:CPU, run in its own process under XLA's default flags:
`python alias_worker.py`. Prints one JSON line.

"pure_jax": issue 18's reproduction, no jaxcnn: conv -> act -> a 2x2/2 max-pool routing whose
window taps are read through a reshape of `a` (a bitcast view) and compared with their maximum,
times act'(a), -> the dx convolution; eagerly and under `jax.jit`, for act in tanh, sigmoid, exp
and relu. "jaxcnn": the same chain through `jaxcnn.backward.max_pool` (the rule must be right on
every jaxlib, whatever the pure-JAX form does).
"""

import json

import jax
import jax.numpy as jnp
import jaxlib
from jax import lax

jax.config.update("jax_enable_x64", True)

from jaxcnn import backward  # noqa: E402

ACTS = {"tanh": (jnp.tanh, lambda a: 1 - a * a),
        "sigmoid": (jax.nn.sigmoid, lambda a: a * (1 - a)),
        "exp": (jnp.exp, lambda a: a),
        "relu": (jax.nn.relu, lambda a: (a > 0).astype(a.dtype))}
DN = ("NHWC", "HWIO", "NHWC")


def reshape_routing(a, dym):
    """The old tile path's shape: taps of a (1, 4, 4, 1) read off a (1, 2, 2, 2, 2, 1) view."""
    v = a.reshape(1, 2, 2, 2, 2, 1)
    taps = [v[:, :, i, :, j, :] for i in range(2) for j in range(2)]
    m = jnp.maximum(jnp.maximum(taps[0], taps[1]), jnp.maximum(taps[2], taps[3]))
    taken, routed = jnp.zeros(m.shape, bool), []
    for t in taps:
        win = (t == m) & ~taken
        taken = taken | win
        routed.append(jnp.where(win, dym, 0.0))
    return jnp.stack(routed, 0).reshape(2, 2, 1, 2, 2, 1).transpose(2, 3, 0, 4, 1, 5) \
        .reshape(1, 4, 4, 1)


def chain(route, act, x, w, dym):
    """sum over positions of dx, for z = conv(x, w), a = act(z), dz = route(a, dym) * act'(a)."""
    f, df = ACTS[act]
    a = f(lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN))
    dz = route(a, dym) * df(a)
    dx = lax.conv_general_dilated(dz, w[::-1, ::-1].transpose(0, 1, 3, 2), (1, 1),
                                  [(2, 2), (2, 2)], dimension_numbers=DN)
    return dx.sum((0, 1, 2))


def main() -> dict:
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (1, 6, 6, 1))
    w = jax.random.normal(k[1], (3, 3, 1, 1))
    dym = jax.random.normal(k[2], (1, 2, 2, 1))
    out: dict = {"jaxlib": jaxlib.__version__}
    for name, route in (("pure_jax", reshape_routing),
                        ("jaxcnn", lambda a, dy: backward.max_pool(dy, a))):
        rows = {}
        for act in ACTS:
            eager = float(chain(route, act, x, w, dym)[0])
            jitted = float(jax.jit(chain, static_argnums=(0, 1))(route, act, x, w, dym)[0])
            rows[act] = {"eager": eager, "jit": jitted,
                         "rel": abs(jitted - eager) / max(abs(eager), 1e-300)}
        out[name] = rows
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
