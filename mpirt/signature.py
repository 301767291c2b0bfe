"""What every rank must agree on before the first gradient collective, and how to say where
two ranks differ. Pure functions, so the wording is tested without MPI."""

from __future__ import annotations


class ModelMismatchError(RuntimeError):
    """Ranks built different models; raised on every rank before any gradient collective."""


def _kind(t) -> str:
    return f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}"


def signature(named_params, named_buffers, config) -> list[tuple[str, str]]:
    """(what, description) per entry: the data_parallel options, then every trainable
    parameter and buffer in order."""
    sig = [("config", repr(config))]
    sig += [(f"parameter {n!r}", f"{_kind(p)} ({p.device.type})") for n, p in named_params]
    sig += [(f"buffer {n!r}", _kind(t)) for n, t in named_buffers]
    return sig


def describe_mismatch(sigs: list[list[tuple]]) -> str:
    """The first entry where some rank differs from rank 0, and which ranks differ there."""
    ref = sigs[0]
    first, ranks = None, []
    for r, sig in enumerate(sigs[1:], start=1):
        if sig == ref:
            continue
        i = next((k for k, (a, b) in enumerate(zip(ref, sig)) if a != b), min(len(ref), len(sig)))
        if first is None or i < first:
            first, ranks = i, [r]
        elif i == first:
            ranks.append(r)
    r = ranks[0]
    theirs, mine = sigs[r], ref
    who = f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}"
    if first >= len(mine) or first >= len(theirs):
        longer, extra = (theirs, "has extra") if len(theirs) > len(mine) else (mine, "lacks")
        what = f"{longer[first][0]}" if first < len(longer) else "entries"
        detail = f"{who} {extra} {what} ({len(theirs) - 1} vs {len(mine) - 1} entries on rank 0)"
    elif mine[first][0] == "config":
        detail = f"data_parallel options differ: rank 0 {mine[first][1]}, {who} {theirs[first][1]}"
    elif mine[first][0] != theirs[first][0]:
        detail = f"rank 0 has {mine[first][0]} where {who} has {theirs[first][0]}"
    else:
        detail = f"{mine[first][0]} is {mine[first][1]} on rank 0 but {theirs[first][1]} on {who}"
    return (f"model differs across ranks: {detail}. Every rank must build the same model with the same "
            "data_parallel options (check rank-dependent code, a different config or checkpoint per rank)")
