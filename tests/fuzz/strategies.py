"""
Hostile inputs built from real ones: a seed (a captured kernel file, a valid config, a valid protocol reply) damaged by
one to four stacked mutations, at the byte, token and line level, with tokens chosen to hit the edges that parsers
get wrong (huge and negative numbers, numbers Python's ``int`` accepts but the kernel never prints, non-ASCII digits
and whitespace, line separators that ``str.splitlines`` honours, NUL, invalid UTF-8).
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

from hypothesis import strategies as st

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

# Tokens that replace a field or are inserted. Every one is something a damaged or hostile file could hold and at
# least one parser in the tree has had to decide about.
TOKENS: tuple[bytes, ...] = (
    b"",
    b"0",
    b"-0",
    b"-1",
    b"+7",
    b"4294967296",
    b"9223372036854775808",
    b"18446744073709551615",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"9" * 400,  # an int whose float() overflows
    b"9" * 5000,  # past Python's int() digit limit (ValueError, not OverflowError)
    b"1_000",  # int() accepts it, the kernel never prints it
    b"0x1f",
    b"1e3",
    b"1.5",
    b"nan",
    b"inf",
    b"-inf",
    b"max",
    b"N/A",
    b"-",
    b":",
    b"=",
    b"total=",
    b"\\",
    b"\\040",
    b"\\777",
    b"\x00",
    b"\t",
    b"\r",
    b"\r\n",
    b"\n",
    b"\n\n",
    b" ",
    b"\x0b",
    b"\x1c",  # str.splitlines() splits here, bytes.splitlines() and split("\n") do not
    b"\xc2\x85",  # U+0085 NEL: a line break to str.splitlines, whitespace to str.split
    b"\xc2\xa0",  # U+00A0: whitespace to str.split, not to bytes.split
    b"\xe2\x80\xa8",  # U+2028 LINE SEPARATOR
    b"\xd9\xa3",  # U+0663 ARABIC-INDIC DIGIT THREE: str.isdigit() and int() accept it
    b"\xc2\xb2",  # U+00B2 SUPERSCRIPT TWO: str.isdigit() is true, int() refuses it
    b"\xef\xbc\x91",  # U+FF11 FULLWIDTH DIGIT ONE
    b"\xff",
    b"\xfe\xfd",
    b"\xed\xa0\x80",  # an encoded surrogate: invalid UTF-8
)

_TOKEN_RE = re.compile(rb"[^\s]+")
_DIGITS_RE = re.compile(rb"[0-9]+")
_ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)


def _byte_op(rng: random.Random, data: bytes) -> bytes:
    """Truncate, or replace, insert or delete a few bytes, or flip one bit."""
    pos = rng.randint(0, len(data))
    how = rng.randrange(5)
    if how == 0:
        return data[:pos]
    if how == 1 and pos < len(data):
        return data[:pos] + bytes([data[pos] ^ (1 << rng.randrange(8))]) + data[pos + 1 :]
    chunk = rng.randbytes(rng.randint(1, 4))
    if how == 2:
        return data[:pos] + chunk + data[pos + len(chunk) :]
    if how == 3:
        return data[:pos] + chunk + data[pos:]
    return data[:pos] + data[pos + rng.randint(1, 8) :]


def _token_op(rng: random.Random, data: bytes) -> bytes:
    """Replace one whitespace-separated token (or every number) with a hostile token, or insert one anywhere."""
    token = rng.choice(TOKENS)
    how = rng.randrange(4)
    if how == 0:
        return _DIGITS_RE.sub(lambda _: token, data)
    spans = [m.span() for m in _TOKEN_RE.finditer(data)] if how < 3 else []
    if spans:
        start, end = rng.choice(spans)
        return data[:start] + token + data[end:]
    pos = rng.randint(0, len(data))
    return data[:pos] + token + data[pos:]


def _line_op(rng: random.Random, data: bytes, seeds: Sequence[bytes]) -> bytes:
    """A line-level edit: drop, repeat, swap or join lines, insert a token line, or bring in another seed's line."""
    lines = data.split(b"\n")
    i = rng.randrange(len(lines))
    how = rng.randrange(7)
    if how == 0:
        del lines[i]
    elif how == 1:
        lines.insert(i, lines[i])
    elif how == 2:
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    elif how == 3:
        lines.insert(i, rng.choice(TOKENS))
    elif how == 4 and i + 1 < len(lines):
        lines[i : i + 2] = [lines[i] + lines[i + 1]]
    elif how == 5:
        lines.insert(i, rng.choice(rng.choice(seeds).split(b"\n")))
    else:
        lines[i : i + 1] = [lines[i]] * rng.randint(2, 50)
    return b"\n".join(lines)


@st.composite
def hostile_bytes(draw: st.DrawFn, seeds: Sequence[bytes], max_ops: int = 4) -> bytes:
    """
    One of ``seeds`` after 1 to ``max_ops`` stacked byte, token and line mutations; one in twenty is arbitrary bytes.

    The mutations are driven by a pseudo-random generator seeded from one drawn integer: two draws per example instead
    of about twenty keep Hypothesis' per-draw cost from dominating (under 1 ms an example instead of 2.5), and a
    failure still replays exactly. Shrinking reduces the number of mutations and the generator's seed.
    """
    ops = draw(st.integers(1, max_ops))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if not seeds or rng.randrange(20) == 0:
        return rng.randbytes(rng.randint(0, 300))
    data = rng.choice(seeds)
    for _ in range(ops):
        kind = rng.randrange(5)
        if kind == 0:
            data = _byte_op(rng, data)
        elif kind < 3:
            data = _token_op(rng, data)
        else:
            data = _line_op(rng, data, seeds)
    return data


def decode(data: bytes) -> str:
    """Bytes as ``nodeagent.hostfs.read_text`` hands them to a parser."""
    return data.decode("utf-8", "replace")


def hostile_text(seeds: Sequence[str], max_ops: int = 4) -> st.SearchStrategy[str]:
    """
    Text as a parser gets it from ``read_text``: a damaged seed decoded with replacement; one in ten is arbitrary
    Unicode instead (any code point but surrogates, which ``read_text`` never yields).
    """
    damaged = hostile_bytes(tuple(s.encode() for s in seeds), max_ops).map(decode)
    return st.integers(0, 9).flatmap(lambda i: _ANY_TEXT if i == 0 else damaged)


def fixture_text(*parts: str) -> str:
    """A committed fixture file as text (``fixture_text("proc", "stat")``)."""
    return FIXTURES.joinpath(*parts).read_text(encoding="utf-8")


def fixture_bytes(*parts: str) -> bytes:
    """A committed fixture file as bytes."""
    return FIXTURES.joinpath(*parts).read_bytes()


def live_text(path: str) -> list[str]:
    """This machine's copy of a kernel file as an extra seed, or nothing where it does not exist or cannot be read."""
    try:
        return [Path(path).read_text(encoding="utf-8", errors="replace")]
    except OSError:
        return []


def chunked(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` split at arbitrary points (empty pieces included), to feed a stream reader piece by piece."""
    if not data:
        return st.just([])
    return st.lists(st.integers(0, len(data)), max_size=8).map(lambda cuts: _split(data, sorted(cuts)))


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    return [data[a:b] for a, b in pairwise([0, *cuts, len(data)])]


# Values a hostile or broken peer can put where a JSON document should have something else.
JSON_HOSTILE_VALUES: tuple[object, ...] = (
    None,
    True,
    0,
    -1,
    2**64,
    10**400,
    1.5,
    float("inf"),
    float("nan"),
    "",
    "x",
    "not a number",
    "9" * 5000,
    [],
    [1, "a"],
    {},
    {"a": [None]},
    "\x00\ud800",
)


def _json_paths(doc: object, prefix: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    """The path (keys and indexes) of every node of a JSON tree, the root included."""
    paths = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            paths += _json_paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            paths += _json_paths(value, (*prefix, i))
    return paths


def _replace_at(doc: object, path: tuple[object, ...], value: object) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {k: (_replace_at(v, rest, value) if k == head else v) for k, v in doc.items()}
    assert isinstance(doc, list) and isinstance(head, int)
    return [_replace_at(v, rest, value) if i == head else v for i, v in enumerate(doc)]


def _json_bytes(doc: object) -> bytes:
    return json.dumps(doc, allow_nan=True).encode("utf-8", "surrogatepass")


@st.composite
def hostile_json(draw: st.DrawFn, seeds: Sequence[object], max_ops: int = 3) -> bytes:
    """
    A JSON document of a peer's answer with 1 to ``max_ops`` nodes replaced by values of the wrong type or range (or
    keys dropped), serialised as a peer would send it; one in five is additionally damaged at the byte level, and
    one in forty is nested too deeply for a recursive parser.
    """
    ops = draw(st.integers(1, max_ops))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if rng.randrange(40) == 0:
        return b"[" * 5_000 + b"]" * 5_000
    doc = rng.choice(seeds)
    for _ in range(ops):
        path = rng.choice(_json_paths(doc))
        if path and rng.randrange(4) == 0:
            doc = _drop_at(doc, path)
        else:
            doc = _replace_at(doc, path, rng.choice(JSON_HOSTILE_VALUES))
    data = _json_bytes(doc)
    if rng.randrange(5) == 0:
        data = _token_op(rng, _byte_op(rng, data))
    return data


def _drop_at(doc: object, path: tuple[object, ...]) -> object:
    """``doc`` without the node at ``path`` (a key removed from its object, an element from its array)."""
    head, rest = path[0], path[1:]
    if not rest:
        if isinstance(doc, dict):
            return {k: v for k, v in doc.items() if k != head}
        assert isinstance(doc, list)
        return [v for i, v in enumerate(doc) if i != head]
    if isinstance(doc, dict):
        return {k: (_drop_at(v, rest) if k == head else v) for k, v in doc.items()}
    assert isinstance(doc, list)
    return [_drop_at(v, rest) if i == head else v for i, v in enumerate(doc)]
