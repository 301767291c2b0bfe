"""`mpirt bench compare BASE NEW`: row by row, how NEW performs relative to BASE; a CI gate.

Each row is judged by its kind's primary metric (schema.KINDS). ``perf`` is NEW's
performance over BASE's (> 1 is better, whichever way the metric points). The noise of the
ratio of two medians is taken as twice the combined coefficient of variation,
2 * sqrt(cv_base^2 + cv_new^2). A row regresses when it is slower by more than the threshold
AND by more than that noise; slower by more than the threshold but within the noise is
reported as such and does not fail the gate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from mpirt.bench import schema


@dataclass(frozen=True)
class CompareConfig:
    base: str
    new: str
    threshold: str = "5%"
    as_json: bool = False


@dataclass(frozen=True)
class Verdict:
    row: str
    metric: str
    base: float | None
    new: float | None
    perf: float | None  # NEW performance / BASE performance
    noise: float | None
    verdict: str  # regression | improved | within noise | same | only in BASE | only in NEW


def parse_threshold(text: str) -> float:
    """'5%' or '0.05' -> 0.05."""
    t = text.strip()
    try:
        value = float(t[:-1]) / 100 if t.endswith("%") else float(t)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1 or (not t.endswith("%") and value >= 1):
        raise ValueError(f"--threshold {text!r}: give a percentage such as 5% (or a fraction such as 0.05)")
    return value


def judge(base: dict, new: dict, metric: str, threshold: float) -> tuple[float, float, str]:
    b, n = base["median"], new["median"]
    higher = schema.METRICS[metric][0] == "higher"
    if b > 0 and n > 0:
        perf = n / b if higher else b / n
    else:  # a zero on either side: only the direction is known
        perf = 1.0 if b == n else (math.inf if (n > b) == higher else 0.0)
    noise = 2 * math.hypot(base["cv"], new["cv"])
    if perf < 1 - threshold:
        return perf, noise, "regression" if 1 - perf > noise else "within noise"
    if perf > 1 + threshold:
        return perf, noise, "improved" if perf - 1 > noise else "within noise"
    return perf, noise, "same"


def compare(base: dict, new: dict, threshold: float) -> list[Verdict]:
    if base["benchmark"] != new["benchmark"]:
        raise ValueError(f"BASE is a {base['benchmark']!r} result and NEW a {new['benchmark']!r} one: compare results "
                         "of the same benchmark")
    b_rows = {schema.row_id(r): r for r in base["rows"]}
    n_rows = {schema.row_id(r): r for r in new["rows"]}
    if not b_rows.keys() & n_rows.keys():
        raise ValueError("BASE and NEW have no row in common (different sizes, world sizes or algorithms?): run "
                         "both with the same options")
    out = []
    for rid in list(b_rows) + [r for r in n_rows if r not in b_rows]:
        row = b_rows.get(rid) or n_rows[rid]
        metric = schema.KINDS[row["kind"]][1]
        if rid not in n_rows or rid not in b_rows:
            side = "only in BASE" if rid not in n_rows else "only in NEW"
            value = row["metrics"][metric]["median"]
            out.append(Verdict(schema.describe(row), metric, value if side == "only in BASE" else None,
                               value if side == "only in NEW" else None, None, None, side))
            continue
        b, n = b_rows[rid]["metrics"][metric], n_rows[rid]["metrics"][metric]
        perf, noise, verdict = judge(b, n, metric, threshold)
        out.append(Verdict(schema.describe(row), metric, b["median"], n["median"], perf, noise, verdict))
    return out


# What about the runs differs that changes the figures: the machine, and how the core was used.
_PICKS = {"MPI": ("env", "mpi", "library"), "CPU": ("env", "cpu", "model"), "hosts": ("env", "hosts", "count"),
          "network tier": ("env", "network", "tier"), "oversubscribed": ("env", "hosts", "oversubscribed"),
          "shared buffers": ("config", "shared_buffers"),
          "collective on shared buffers": ("config", "collective", "shared_buffers"),
          "mpirt reduced by": ("config", "train", "reduced_by", "mpirt")}


def _pick(doc: dict, path: tuple[str, ...]):
    for part in path:
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


def env_differences(base: dict, new: dict) -> list[str]:
    """What differs between the runs (machine, buffers, what reduced the gradients): the
    comparison may still be wanted, but should be known."""
    return [f"{label}: {_pick(base, path)} -> {_pick(new, path)}" for label, path in _PICKS.items()
            if _pick(base, path) != _pick(new, path)]


def table(verdicts: list[Verdict], threshold: float) -> str:
    width = max(len(v.row) for v in verdicts)
    lines = [f"{'row':<{width}}  {'metric':<13} {'base':>11} {'new':>11} {'new/base':>8} {'noise':>6}  verdict"]
    for v in verdicts:
        num = (lambda x: f"{x:11.4g}" if x is not None else f"{'-':>11}")
        perf = f"{v.perf:8.3f}" if v.perf is not None else f"{'-':>8}"
        noise = f"{v.noise:6.1%}" if v.noise is not None else f"{'-':>6}"
        lines.append(f"{v.row:<{width}}  {v.metric:<13} {num(v.base)} {num(v.new)} {perf} {noise}  {v.verdict}")
    bad = sum(v.verdict == "regression" for v in verdicts)
    lines.append(f"{bad} regression(s) beyond {threshold:.0%} and the noise; new/base > 1 is better")
    return "\n".join(lines)


def run(cfg: CompareConfig) -> int:
    threshold = parse_threshold(cfg.threshold)
    base, new = schema.load(cfg.base), schema.load(cfg.new)
    verdicts = compare(base, new, threshold)
    diffs = env_differences(base, new)
    if cfg.as_json:
        print(json.dumps({"threshold": threshold, "env_differences": diffs,
                          "rows": [asdict(v) for v in verdicts]}, indent=1))
    else:
        if diffs:
            print("note: the runs differ: " + "; ".join(diffs))
        print(table(verdicts, threshold))
    return 1 if any(v.verdict == "regression" for v in verdicts) else 0
