"""Checkpoints that survive a crash: a pytree's leaves and JSON metadata in one .npz file,
written to a temporary file in the same directory, flushed to disk, then renamed over the old one.
A reader therefore sees either the previous checkpoint or the new one, never half of one.

No pickle: loading rebuilds the tree from a template of the same structure (fresh params, state
and optimizer state), and checks every leaf's shape and dtype.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np


def save(path: str | Path, tree: Any, meta: dict[str, Any]) -> None:
    """Atomically write `tree`'s leaves (as NumPy arrays) and `meta` (JSON-serialisable)."""
    path = Path(path)
    leaves = jax.tree.leaves(tree)
    arrays = {f"leaf_{i:05d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path, like: Any) -> tuple[Any, dict[str, Any]]:
    """Read a checkpoint into the structure of `like`; returns (tree, meta).

    Raises ValueError naming the file if it is not a jaxcnn checkpoint or does not match the
    template (another model, optimizer or dtype).
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            stored = [z[k] for k in sorted(k for k in z.files if k.startswith("leaf_"))]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a readable jaxcnn checkpoint ({e})") from e
    template, treedef = jax.tree.flatten(like)
    if len(stored) != len(template):
        raise ValueError(f"{path}: holds {len(stored)} arrays but this model, optimizer and "
                         f"state need {len(template)}; was it written by another configuration?")
    for i, (a, t) in enumerate(zip(stored, template)):
        if a.shape != t.shape or a.dtype != np.dtype(t.dtype):
            raise ValueError(f"{path}: array {i} is {a.shape} {a.dtype} but the template needs "
                             f"{t.shape} {np.dtype(t.dtype)}")
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(a) for a in stored]), meta
