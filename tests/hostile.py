"""Hypothesis strategies for hostile file content: valid kernel output damaged in the ways files get damaged."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw: st.DrawFn, valid: bytes) -> bytes:
    """Valid content truncated, with bytes replaced, inserted or deleted, or arbitrary bytes."""
    how = draw(st.sampled_from(["arbitrary", "truncate", "replace", "insert", "delete", "numbers"]))
    if how == "arbitrary":
        return draw(st.binary(max_size=200))
    if how == "truncate":
        return valid[: draw(st.integers(0, len(valid)))]
    if how == "numbers":
        # Every digit run replaced by another (possibly huge, negative or non-decimal) token.
        token = draw(st.one_of(st.integers(-(10**30), 10**400).map(str), st.sampled_from(["max", "-", "1e3", "1_0"])))
        return b"".join(token.encode() if part.isdigit() else part for part in split_digits(valid))
    pos = draw(st.integers(0, len(valid)))
    chunk = draw(st.binary(min_size=1, max_size=4))
    if how == "replace":
        return valid[:pos] + chunk + valid[pos + len(chunk) :]
    if how == "insert":
        return valid[:pos] + chunk + valid[pos:]
    return valid[:pos] + valid[pos + len(chunk) :]


def split_digits(data: bytes) -> list[bytes]:
    """``data`` cut into runs of ASCII digits and runs of everything else."""
    parts: list[bytes] = []
    for i in range(len(data)):
        c = data[i : i + 1]
        if parts and parts[-1].isdigit() == c.isdigit():
            parts[-1] += c
        else:
            parts.append(c)
    return parts
