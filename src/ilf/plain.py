"""Plain values: what a program under test may hand back to ilf, as JSON.

EVAL's split judge (ilf.judge) never lets the expected values into the sandbox: the child calls the
program's functions and sends back what they returned, encoded here, and ilf compares outside.
Only plain data crosses (numbers, strings, bytes, None, and lists, tuples, sets, dicts of them, a
few stdlib containers). Anything else (a generator, an object whose `__eq__` could say yes to
anything) crosses as an Opaque stand-in holding its type and repr, equal only to itself: the
comparison always runs on values ilf built itself.

The encoding is tagged JSON that keeps Python's equality exact: 1 vs 1.0 vs True, tuple vs list,
nan and infinities, big ints, dict keys of any plain type. `encode` runs in the sandbox child
(this module imports nothing the sandbox worker may not import); `decode` runs in ilf, with limits,
since the bytes come from an untrusted process.
"""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 100
"""Nesting depth of a value: deeper is refused (in both directions), so comparing it cannot
exhaust the interpreter's stack."""
MAX_ITEMS = 1_000_000
"""Scalars and containers in one decoded value."""
MAX_REPR = 200
"""Characters kept of the repr of a value that is not plain."""
MAX_EQUAL_HASHES = 64
"""Elements of one decoded set (or keys of one dict) that may share a hash value. Equal hashes make
building the set quadratic: a program could return 20,000 integers that all hash alike and hold
ilf's process for seconds while it rebuilds them. Python's own values collide this rarely."""
MAX_FRACTION_BITS = 1 << 17
"""Bits of a decoded Fraction's numerator or denominator: Fraction() normalises with a gcd, which
takes seconds on terms of millions of bits."""
LARGE_VALUE_BYTES = 1 << 20
"""A returned value whose encoding is larger crosses as its digest (Digest): HumanEval+ asks for
outputs of hundreds of kB on each of hundreds of inputs."""


_KEYS_VIEW = type({}.keys())


def _type_name(x) -> str:
    t = type(x)
    mod = getattr(t, "__module__", "") or ""
    return t.__qualname__ if mod == "builtins" else f"{mod}.{t.__qualname__}"


def encode(x, _depth: int = 0):
    """Python value -> JSON-able tagged value (an opaque stand-in for what is not plain)."""
    if _depth > MAX_DEPTH:
        return {"o": ["...", f"<nested deeper than {MAX_DEPTH}>"]}
    t = type(x)
    if x is None or t is bool or t is str:
        return x
    if t is int:
        return x if -(2**53) < x < 2**53 else {"i": hex(x)}
    if t is float:
        return x if math.isfinite(x) else {"x": repr(x)}
    d = _depth + 1
    if t is list:
        return {"l": [encode(v, d) for v in x]}
    if t is tuple:
        return {"t": [encode(v, d) for v in x]}
    if t is dict:
        return {"d": [[encode(k, d), encode(v, d)] for k, v in x.items()]}
    if t is set:
        return {"s": [encode(v, d) for v in x]}
    if t is frozenset:
        return {"fs": [encode(v, d) for v in x]}
    if t is bytes:
        return {"b": x.hex()}
    if t is complex:
        return {"c": [encode(x.real, d), encode(x.imag, d)]}
    mod = getattr(t, "__module__", "")
    name = getattr(t, "__qualname__", "")
    if mod == "collections":
        if name == "OrderedDict":
            return {"od": [[encode(k, d), encode(v, d)] for k, v in x.items()]}
        if name == "Counter":
            return {"ctr": [[encode(k, d), encode(v, d)] for k, v in x.items()]}
        if name in ("defaultdict", "ChainMap", "UserDict"):  # compare as dict(x.items())
            return {"d": [[encode(k, d), encode(v, d)] for k, v in dict(x.items()).items()]}
        if name == "UserList":  # compares as its list
            return encode(list(x.data), _depth)
        if name == "UserString":
            return encode(str(x.data), _depth)
        if name == "deque":
            return {"dq": [encode(v, d) for v in x]}
    if t is _KEYS_VIEW:  # a keys view is set-like: equal to a set of its keys, not to a list
        return {"s": [encode(v, d) for v in x]}
    if mod == "fractions" and name == "Fraction":
        return {"fr": [hex(x.numerator), hex(x.denominator)]}
    if mod == "decimal" and name == "Decimal":
        return {"dec": str(x)}
    if mod == "numpy" and hasattr(x, "item") and getattr(x, "ndim", None) == 0:
        return encode(x.item(), _depth)  # a numpy scalar compares as its Python value
    # subclasses that keep their base's equality (namedtuple, bytearray-free str/int enums...)
    for base, tag in ((tuple, "t"), (list, "l"), (str, None), (int, None), (float, None)):
        if isinstance(x, base) and t.__eq__ is base.__eq__:
            if tag is None:
                return encode(base(x), _depth) if t is not bool else x
            return {tag: [encode(v, d) for v in x]}
    return opaque(x)


def encode_for_transfer(x) -> dict | list | str | int | float | bool | None:
    """`encode`, or the digest of a value whose encoding exceeds LARGE_VALUE_BYTES."""
    enc = encode(x)
    if isinstance(enc, dict) or (isinstance(enc, str) and len(enc) > LARGE_VALUE_BYTES // 4):
        size = len(json.dumps(enc))
        if size > LARGE_VALUE_BYTES:
            return {"h": [digest(enc), size]}
    return enc


def digest(enc) -> str:
    """sha256 of an encoded value in canonical form (set elements and dict items sorted)."""
    import hashlib

    return hashlib.sha256(json.dumps(_canonical(enc), separators=(",", ":")).encode()).hexdigest()


def _canonical(o):
    if isinstance(o, dict) and len(o) == 1:
        ((tag, v),) = o.items()
        if tag in ("s", "fs") and isinstance(v, list):
            return {tag: sorted((_canonical(e) for e in v), key=lambda e: json.dumps(e, sort_keys=True))}
        if tag in ("d", "ctr") and isinstance(v, list):
            pairs = [[_canonical(k), _canonical(w)] for k, w in v]
            return {tag: sorted(pairs, key=lambda p: json.dumps(p[0], sort_keys=True))}
        if isinstance(v, list):
            return {tag: [_canonical(e) for e in v]}
    return o


class Digest:
    """Stands, in ilf, for a returned value too large to transfer: equal to a value whose canonical
    encoding has the same digest (1 and 1.0 differ here, as do nearly-equal floats)."""

    __slots__ = ("hex", "size")

    def __init__(self, hex_: str, size: int):
        self.hex, self.size = hex_, size

    def __eq__(self, other) -> bool:
        if isinstance(other, Digest):
            return self.hex == other.hex
        return self.hex == digest(encode(other))

    def __ne__(self, other) -> bool:
        return not self.__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<a value of {self.size} bytes, sha256 {self.hex[:12]}>"


_ADDRESS = re.compile(r" at 0x[0-9A-Fa-f]+")


def without_addresses(text: str) -> str:
    """A repr without its memory addresses ("<generator object f at 0x7f...>" -> "<generator
    object f>"): they change from run to run, and verdicts, feedback and prompts built from them
    must not."""
    return _ADDRESS.sub("", text)


def opaque(x) -> dict:
    """What ilf gets for a value that is not plain: its type and repr, never the object."""
    try:
        text = without_addresses(repr(x))
        text = text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."
    except BaseException:  # noqa: BLE001 - a hostile __repr__
        text = f"<{_type_name(x)}>"
    return {"o": [_type_name(x), text if isinstance(text, str) else f"<{_type_name(x)}>"]}


class Opaque:
    """Stands, in ilf, for a returned object that is not plain data (a generator, a map, an
    object of the program's own class): equal only to itself, so any comparison with an expected
    value fails, and shown with the program's repr, as an in-process test would show it."""

    __slots__ = ("type_name", "text")

    def __init__(self, type_name: str, text: str):
        self.type_name, self.text = type_name, text

    def __repr__(self) -> str:
        return self.text

    def __hash__(self) -> int:
        return id(self)


def decode(obj, budget: list[int] | None = None):
    """Tagged JSON value -> Python value. ValueError for anything malformed or over the limits.
    `budget`: a one-item list of items left, shared by several values (one job's answers)."""
    return _decode(obj, 0, budget if budget is not None else [MAX_ITEMS])


def _decode(o, depth: int, budget: list):
    budget[0] -= 1
    if budget[0] < 0:
        raise ValueError("more items than a value may hold")
    if depth > MAX_DEPTH + 1:
        raise ValueError(f"nested deeper than {MAX_DEPTH}")
    if o is None or isinstance(o, (bool, str)):
        return o
    if isinstance(o, int):
        return int(o)
    if isinstance(o, float):
        return float(o)
    if not isinstance(o, dict) or len(o) != 1:
        raise ValueError("not a tagged value")
    ((tag, v),) = o.items()
    d = depth + 1

    def items():
        if not isinstance(v, list):
            raise ValueError(f"tag {tag!r} needs a list")
        return [_decode(e, d, budget) for e in v]

    def pairs():
        if not isinstance(v, list) or not all(isinstance(p, list) and len(p) == 2 for p in v):
            raise ValueError(f"tag {tag!r} needs a list of pairs")
        return [(_decode(k, d, budget), _decode(w, d, budget)) for k, w in v]

    try:
        if tag == "i":
            return int(v, 16)
        if tag == "x":
            if v not in ("nan", "inf", "-inf"):
                raise ValueError("bad float")
            return float(v)
        if tag == "l":
            return items()
        if tag == "t":
            return tuple(items())
        if tag == "s":
            return set(_few_collisions(items()))
        if tag == "fs":
            return frozenset(_few_collisions(items()))
        if tag == "d":
            return dict(_few_collisions(pairs(), keyed=True))
        if tag == "b":
            return bytes.fromhex(v)
        if tag == "c":
            re_, im = items()
            return complex(re_, im)
        if tag == "od":
            from collections import OrderedDict

            return OrderedDict(_few_collisions(pairs(), keyed=True))
        if tag == "ctr":
            from collections import Counter

            return Counter(dict(_few_collisions(pairs(), keyed=True)))
        if tag == "dq":
            from collections import deque

            return deque(items())
        if tag == "fr":
            from fractions import Fraction

            num, den = int(v[0], 16), int(v[1], 16)
            if max(num.bit_length(), den.bit_length()) > MAX_FRACTION_BITS:
                raise ValueError(f"terms over {MAX_FRACTION_BITS} bits")
            return Fraction(num, den)
        if tag == "dec":
            from decimal import Decimal

            return Decimal(v)
        if tag == "h":
            if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)):
                raise ValueError("bad digest")
            return Digest(v[0][:64], v[1])
        if tag == "o":
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)):
                raise ValueError("bad opaque value")
            return Opaque(v[0][:200], v[1][:MAX_REPR])
    except (TypeError, ValueError, ArithmeticError) as e:
        raise ValueError(f"bad {tag!r} value: {e}") from None
    raise ValueError(f"unknown tag {tag!r}")


def _few_collisions(elems: list, keyed: bool = False) -> list:
    """`elems` (or pairs whose first items are keys), refused if more than MAX_EQUAL_HASHES of them
    share a hash value (see there). Hashing is linear; building the container afterwards is too."""
    from collections import Counter

    keys = [e[0] for e in elems] if keyed else elems
    if len(keys) > MAX_EQUAL_HASHES:
        worst = Counter(hash(k) for k in keys).most_common(1)[0][1]
        if worst > MAX_EQUAL_HASHES:
            raise ValueError(f"{worst} elements share one hash value")
    return elems


# ---------------------------------------------------------------------------------------------
# The ILF authors' float rule (eval_mbpp.py in nyu-mll/ILF-for-code-generation): an MBPP task whose
# first assert compares with a number has every `assert X == Y` read as `assert X == approx(Y)`,
# pytest.approx with its defaults. Here (not in ilf.judge) because an in-process test runs it in
# the sandbox, which imports nothing but the standard library and this module.

APPROX_REL = 1e-6
"""pytest.approx's default relative tolerance."""
APPROX_ABS = 1e-12
"""pytest.approx's default absolute tolerance."""


class approx:  # noqa: N801 - read in a test as the authors wrote it: `f(x) == approx(2.5)`
    """`actual == approx(expected)` as with pytest.approx(expected) and its default tolerances:
    numbers within max(1e-6 x |expected|, 1e-12); a list or tuple element by element, of the same
    length; a dict value by value, with the same keys; anything else exactly. Nested containers
    and sets are refused (TypeError), as pytest refuses them."""

    __slots__ = ("expected",)

    def __init__(self, expected):
        if isinstance(expected, (set, frozenset)):
            raise TypeError("approx() takes no sets (their order is not defined)")
        items = expected.values() if isinstance(expected, dict) else expected if isinstance(expected, (list, tuple)) else ()
        if any(isinstance(v, (list, tuple, dict, set, frozenset)) for v in items):
            raise TypeError("approx() takes no nested containers")
        self.expected = expected

    def __eq__(self, actual) -> bool:
        exp = self.expected
        if isinstance(exp, dict):
            try:
                if set(actual.keys()) != set(exp.keys()):
                    return False
                return all(_approx_scalar(actual[k], v) for k, v in exp.items())
            except (AttributeError, TypeError, KeyError):
                return False
        if isinstance(exp, (list, tuple)):
            try:
                if len(actual) != len(exp):
                    return False
                return all(_approx_scalar(a, x) for a, x in zip(actual, exp))
            except TypeError:
                return False
        return _approx_scalar(actual, exp)

    def __ne__(self, actual) -> bool:
        return not self.__eq__(actual)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"approx({self.expected!r})"


def _approx_scalar(actual, expected) -> bool:
    import numbers
    from decimal import Decimal

    if isinstance(expected, bool) and not isinstance(actual, bool):
        return False
    if actual == expected:
        return True
    num = (numbers.Complex, Decimal)
    if isinstance(expected, bool) or not (isinstance(expected, num) and isinstance(actual, num)):
        return False
    if math.isnan(abs(expected)) or math.isinf(abs(expected)):
        return False
    try:
        return bool(abs(expected - actual) <= max(APPROX_REL * abs(expected), APPROX_ABS))
    except TypeError:  # a Decimal against a float
        return bool(abs(float(expected) - complex(actual)) <= max(APPROX_REL * abs(float(expected)), APPROX_ABS))
