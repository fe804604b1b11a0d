"""A static check of a pickle's opcode stream, made before anything in it is unpickled.

`pickle.Unpickler` builds whatever the stream describes, and a few KB can describe a structure
that crashes or hangs the process afterwards: a tuple nested 10**6 deep overflows the C stack
when it is hashed (SIGSEGV), a tuple built by doubling a memo reference 50 times has 2**50
leaves to hash or print, a memo index of 2**31 makes the unpickler resize its memo table to
gigabytes. `scan` walks the stream with `pickletools.genops` (pure Python; it decodes each
opcode's argument and builds nothing else), simulates the unpickler's stack with one small
record per item, and refuses, before the stream is unpickled:

  * any opcode outside `ALLOWED_OPS`, the ones that CIFAR-10's batches use under protocols 0
    to 5 (no sets, no instance-building or extension opcodes, no out-of-band buffers, no
    DUP/POP: a real batch never needs them);
  * more than `MAX_OPS` opcodes, bounding the scan's own work and every count below;
  * lists, tuples and dicts nested deeper than `MAX_DEPTH`, or more than `MAX_MARKS` open MARKs;
  * a memo GET that fetches a list, tuple or dict: only strings, bytes, numbers, None, globals
    and what a global's call returned may be shared, so the result is a tree (no cycles, no
    exponential fan-out) whose size is at most the number of opcodes;
  * a memo index of `MAX_OPS` or more, an int wider than `MAX_INT_BITS` bits, a FRAME longer
    than what is left of the stream (an argument longer than that is already refused by genops);
  * a global not in the caller's `allowed_globals` (GLOBAL's argument, or STACK_GLOBAL's two
    strings), before the unpickler's `find_class` would see it;
  * a dict key that is a list, tuple or dict, a REDUCE whose callable is not a global, a BUILD on
    anything but a global or a REDUCE result, and an unbalanced stack or stray MARK.

Structure errors raise `PickleUnreadableError`, policy refusals `PickleRefusedError` (both
ValueErrors); their messages hold opcode names and byte offsets, never the data.
"""

from __future__ import annotations

import io
import pickletools
from collections.abc import Callable, Container
from typing import Any

__all__ = ["ALLOWED_OPS", "MAX_DEPTH", "MAX_INT_BITS", "MAX_MARKS", "MAX_OPS", "PickleRefusedError",
           "PickleUnreadableError", "scan"]

# A real batch of 10000 images re-pickled with protocol 0 has ~120,000 opcodes (12 an image:
# the filename's bytes as a _codecs.encode call, its label), protocol 2 ~90,000, the original
# files ~30,000; 2**20 leaves 8x room, like MAX_BATCH_BYTES over a batch's 31 MB, and bounds the
# scan's work (~1.3 s of pure Python for 2**20 small opcodes on a 2-core machine).
MAX_OPS = 1 << 20
# A batch nests 3 deep (the dict > the ndarray state tuple > its shape tuple; the dict > the list
# of labels or filenames); 8 leaves room and stops stack-deep recursions in hash() and repr().
MAX_DEPTH = 8
MAX_MARKS = 8  # open MARKs at once: a batch needs 3 (SETITEMS > APPENDS or a TUPLE > a TUPLE)
MAX_INT_BITS = 64  # labels, shapes, flags: no real int is wider

ATOMS = frozenset({
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE",
    "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8",
    "BYTEARRAY8"})
EMPTY = {"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_TUPLE": "tuple"}
FROM_MARK = {"LIST": "list", "DICT": "dict", "TUPLE": "tuple"}
TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
ALLOWED_OPS = frozenset({*ATOMS, *EMPTY, *FROM_MARK, *TUPLE_N, *PUTS, *GETS, "PROTO", "FRAME",
                         "STOP", "MARK", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MEMOIZE",
                         "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD"})

# Stack records: a non-container is one of these shared tuples; a container is a fresh list
# [kind, depth] (depth 1 for an empty one), updated in place while it is still on the stack.
_ATOM, _GLOBAL, _CALLED = ("atom", 0), ("global", 0), ("object", 0)
_CONTAINERS = ("list", "dict", "tuple")
_NAMES = {"atom": "plain value", "global": "global", "object": "global's result", "list": "list",
          "dict": "dict", "tuple": "tuple"}


class PickleRefusedError(ValueError):
    """The stream holds something a CIFAR-10 batch never holds, or exceeds a bound."""


class PickleUnreadableError(ValueError):
    """The stream is not a well-formed pickle (truncated, an unknown opcode, a stack error)."""


class _Scan:
    """The simulated unpickler stack, marks and memo of one stream."""

    def __init__(self, size: int, allowed_globals: Container[tuple[str, str]]) -> None:
        self.size, self.pos, self.op, self.allowed = size, 0, "", allowed_globals
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}

    def fail(self, why: str, refused: bool = True) -> None:
        kind = PickleRefusedError if refused else PickleUnreadableError
        raise kind(f"opcode {self.op} at byte {self.pos}: {why}")

    def pop(self, n: int = 1) -> list[Any]:
        """The top `n` records, removed; past the last MARK or the bottom is an error."""
        floor = self.marks[-1] if self.marks else 0
        if len(self.stack) - n < floor:
            self.fail("the stack holds too few items", refused=False)
        items = self.stack[len(self.stack) - n:]
        del self.stack[len(self.stack) - n:]
        return items

    def pop_mark(self) -> list[Any]:
        """The records above the last MARK, removed with it."""
        if not self.marks:
            self.fail("no MARK to pop to", refused=False)
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def top(self, kinds: tuple[str, ...]) -> Any:
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            self.fail("the stack holds too few items", refused=False)
        if self.stack[-1][0] not in kinds:
            self.fail(f"applies to a {_NAMES[self.stack[-1][0]]}, not a "
                      f"{' or '.join(_NAMES[k] for k in kinds)}")
        return self.stack[-1]

    def container(self, kind: str, items: list[Any]) -> list[Any]:
        """A new container record holding `items`, its depth checked against MAX_DEPTH."""
        record = [kind, 1]
        self.add(record, items)
        return record

    def add(self, record: list[Any], items: list[Any]) -> None:
        """Put `items` into the container `record` (APPEND(S), SETITEM(S), or when built)."""
        if record[0] == "dict":
            if len(items) % 2:
                self.fail("a dict needs key, value pairs", refused=False)
            if any(key[0] in _CONTAINERS for key in items[::2]):
                self.fail("a dict key must not be a list, tuple or dict (a CIFAR-10 batch's "
                          "are bytes)")
        depth = 1 + max((item[1] for item in items), default=0)
        if depth > MAX_DEPTH:
            self.fail(f"lists, tuples and dicts nested more than MAX_DEPTH={MAX_DEPTH} deep (a "
                      "CIFAR-10 batch nests 3 deep)")
        record[1] = max(record[1], depth)

    def check_global(self, module: Any, name: Any) -> None:
        if not (isinstance(module, str) and isinstance(name, str)):
            self.fail("a global named by other than two strings")
        if (module, name) not in self.allowed:
            self.fail(f"refused the global {module[:100]}.{name[:100]}, which a CIFAR-10 batch "
                      "never holds (only numpy arrays, bytes, lists and ints)")

    def memo_index(self, arg: Any) -> int:
        index = len(self.memo) if arg is None else arg
        if not 0 <= index < MAX_OPS:
            self.fail(f"memo index {index} out of 0..{MAX_OPS - 1} (MAX_OPS)")
        return index


def _atom(s: _Scan, op: str, arg: Any) -> None:
    if isinstance(arg, int) and arg.bit_length() > MAX_INT_BITS:
        s.fail(f"an int of {arg.bit_length()} bits (more than MAX_INT_BITS={MAX_INT_BITS})")
    # a short str keeps its value, for STACK_GLOBAL (a batch's module and global names)
    s.stack.append(("atom", 0, arg) if isinstance(arg, str) and len(arg) <= 256 else _ATOM)


def _build(s: _Scan, op: str, arg: Any) -> None:
    if op in EMPTY:
        s.stack.append([EMPTY[op], 1])
    elif op in FROM_MARK:
        s.stack.append(s.container(FROM_MARK[op], s.pop_mark()))
    else:
        s.stack.append(s.container("tuple", s.pop(TUPLE_N[op])))


def _add(s: _Scan, op: str, arg: Any) -> None:
    items = s.pop_mark() if op.endswith("S") else s.pop(1 if op == "APPEND" else 2)
    s.add(s.top(("list",) if op.startswith("APPEND") else ("dict",)), items)


def _memo(s: _Scan, op: str, arg: Any) -> None:
    if op in GETS:
        record = s.memo.get(s.memo_index(arg))
        if record is None:
            s.fail(f"memo index {arg} was never stored", refused=False)
        if record[0] in _CONTAINERS:
            s.fail(f"fetches a {record[0]} from the memo: only strings, bytes, numbers and "
                   "globals may be shared (a CIFAR-10 batch shares nothing else)")
        s.stack.append(record)
    else:  # PUT, BINPUT, LONG_BINPUT, MEMOIZE
        index = s.memo_index(arg)
        s.memo[index] = s.top(("atom", "global", "object", *_CONTAINERS))


def _call(s: _Scan, op: str, arg: Any) -> None:
    if op == "GLOBAL":
        s.check_global(*(arg.split(" ", 1) if " " in arg else (arg, None)))
        s.stack.append(_GLOBAL)
    elif op == "STACK_GLOBAL":
        s.check_global(*(record[2] if len(record) == 3 else None for record in s.pop(2)))
        s.stack.append(_GLOBAL)
    elif op == "REDUCE":
        args = s.pop()[0]
        s.top(("global",))
        if args[0] != "tuple":
            s.fail(f"the arguments are a {args[0]}, not a tuple", refused=False)
        s.stack[-1] = _CALLED  # the allowed globals return a fresh array, dtype or bytes
    else:  # BUILD
        s.pop()
        s.top(("global", "object"))


def _control(s: _Scan, op: str, arg: Any) -> None:
    if op == "MARK":
        if len(s.marks) >= MAX_MARKS:
            s.fail(f"more than MAX_MARKS={MAX_MARKS} MARKs open at once")
        s.marks.append(len(s.stack))
    elif op == "FRAME" and arg > s.size - s.pos - 9:  # 9: the opcode and its 8-byte length
        s.fail(f"a frame of {arg} bytes, more than the {s.size - s.pos - 9} left",
               refused=False)


_HANDLERS: dict[str, Callable[[_Scan, str, Any], None]] = {
    **dict.fromkeys(ATOMS, _atom), **dict.fromkeys([*EMPTY, *FROM_MARK, *TUPLE_N], _build),
    **dict.fromkeys(["APPEND", "APPENDS", "SETITEM", "SETITEMS"], _add),
    **dict.fromkeys([*PUTS, *GETS, "MEMOIZE"], _memo),
    **dict.fromkeys(["GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD"], _call),
    **dict.fromkeys(["PROTO", "FRAME", "MARK"], _control),
}


def scan(raw: bytes, allowed_globals: Container[tuple[str, str]]) -> int:
    """Check the pickle at the start of `raw` against the bounds above, building nothing.

    Args:
      raw: the bytes of the file.
      allowed_globals: the (module, name) pairs the stream may name.

    Returns:
      the offset just after the pickle's STOP opcode (`len(raw)` if nothing trails it).

    Raises:
      PickleRefusedError: an opcode outside ALLOWED_OPS or a bound exceeded (see the module
        docstring), naming the opcode and its byte offset.
      PickleUnreadableError: a truncated or malformed stream.
    """
    s = _Scan(len(raw), allowed_globals)
    ops = pickletools.genops(io.BytesIO(raw))
    for count in range(MAX_OPS + 1):
        try:
            opcode, arg, s.pos = next(ops)
        except StopIteration:  # genops raises ValueError rather than end without a STOP
            s.fail("the stream ended before its STOP", refused=False)
        except (ValueError, EOFError, OverflowError) as e:  # truncated, unknown opcode, ...
            raise PickleUnreadableError(str(e)[:200]) from None
        s.op = opcode.name
        if count == MAX_OPS:
            s.fail(f"more than MAX_OPS={MAX_OPS} opcodes (a CIFAR-10 batch has ~120,000 at most)")
        if s.op == "STOP":
            if len(s.stack) != 1 or s.marks:
                s.fail("the pickle ends with other than one item on its stack", refused=False)
            return s.pos + 1
        if s.op not in ALLOWED_OPS:
            s.fail("not an opcode that a CIFAR-10 batch uses (it holds only dicts, lists, "
                   "tuples, strings, bytes, numbers and numpy arrays)")
        _HANDLERS[s.op](s, s.op, arg)
    raise AssertionError("unreachable")  # pragma: no cover
