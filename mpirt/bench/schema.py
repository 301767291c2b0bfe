"""The one results schema every mpirt benchmark writes: ``mpirt.bench/1``. Tables, plots and
regression checks are views of it, so they can never disagree with the data.

A document::

    {"schema": "mpirt.bench/1",
     "benchmark": "scaling",              # what produced it; only like is compared with like
     "env": {...},                        # everything needed to reproduce it (mpirt.bench.environment)
     "config": {...},                     # the benchmark's own options
     "rows": [{"kind": "collective",      # a key in KINDS
               "key": {"np": 2, "algo": "ring", "size": 1048576, ...},   # what was measured
               "metrics": {"busbw_gbs": STAT, ...},                      # measured, repeated
               "derived": {"efficiency": 0.93, ...}}]}                   # computed from metrics

    STAT = {"median", "min", "max", "mean", "cv", "n", "noisy", "samples": [...]}

A measurement is repeated; ``cv`` (standard deviation / mean) above NOISY_CV marks it noisy
rather than hiding the spread.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

SCHEMA = "mpirt.bench/1"
NOISY_CV = 0.10

# metric -> (which way is better, unit)
METRICS = {
    "busbw_gbs": ("higher", "GB/s"),
    "algbw_gbs": ("higher", "GB/s"),
    "time_us": ("lower", "µs"),
    "samples_per_s": ("higher", "samples/s"),
    "step_s": ("lower", "s"),
    "comm_share": ("lower", "share of step"),
    "seconds": ("lower", "s"),
}

# row kind -> (the fields of its key, the metric a comparison judges it by)
KINDS = {
    "collective": (("np", "algo", "size", "mode", "dtype", "op", "device"), "busbw_gbs"),
    "memcpy": (("np", "size"), "algbw_gbs"),
    "train": (("np", "scaling", "system", "model", "device"), "samples_per_s"),
    "launch": (("case", "hosts", "ranks", "system"), "seconds"),
}

ENV_FIELDS = {
    "mpirt": ("version", "git_commit"),
    "mpi": ("impl", "version", "library", "cuda_aware"),
    "network": ("tier", "env"),
    "cpu": ("model", "cores"),
    "hosts": ("count", "slots", "names", "oversubscribed"),
}
ENV_SCALARS = ("gpus", "command", "timestamp")
STAT_FIELDS = ("median", "min", "max", "mean", "cv", "n", "noisy", "samples")


class ResultsError(ValueError):
    """A results file that cannot be used, with what is wrong and what to do."""


def stat(samples: list[float]) -> dict:
    """Summary of repeated measurements of one quantity."""
    if not samples:
        raise ValueError("a measurement needs at least one sample")
    mean = statistics.fmean(samples)
    sd = statistics.stdev(samples) if len(samples) > 1 else 0.0
    cv = sd / mean if mean else 0.0
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "mean": mean,
            "cv": cv, "n": len(samples), "noisy": cv > NOISY_CV, "samples": list(samples)}


def row_id(row: dict) -> tuple:
    """The identity of a row: its kind and key, comparable across files."""
    fields, _ = KINDS[row["kind"]]
    return (row["kind"],) + tuple(row["key"].get(f) for f in fields)


def describe(row: dict) -> str:
    fields, _ = KINDS[row["kind"]]
    return row["kind"] + " " + " ".join(f"{f}={row['key'][f]}" for f in fields if row["key"].get(f) is not None)


def document(benchmark: str, env: dict, config: dict, rows: list[dict]) -> dict:
    doc = {"schema": SCHEMA, "benchmark": benchmark, "env": env, "config": config, "rows": rows}
    problems = problems_in(doc)
    if problems:  # our own writer broke the contract: say so before anything is written
        raise ResultsError("refusing to write an invalid result: " + "; ".join(problems[:5]))
    return doc


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _stat_problems(where: str, s) -> list[str]:
    if not isinstance(s, dict):
        return [f"{where}: expected an object with {', '.join(STAT_FIELDS)}"]
    out = [f"{where}.{f}: missing" for f in STAT_FIELDS if f not in s]
    if out:
        return out
    for f in ("median", "min", "max", "mean", "cv"):
        if not _is_number(s[f]):
            out.append(f"{where}.{f}: expected a finite number, got {s[f]!r}")
    if not isinstance(s["samples"], list) or not s["samples"] or not all(_is_number(x) for x in s["samples"]):
        out.append(f"{where}.samples: expected a non-empty list of numbers")
    elif s["n"] != len(s["samples"]):
        out.append(f"{where}.n: {s['n']!r} but {len(s['samples'])} samples")
    elif not out and not s["min"] <= s["median"] <= s["max"]:
        out.append(f"{where}: median {s['median']} outside [min {s['min']}, max {s['max']}]")
    if not isinstance(s["noisy"], bool):
        out.append(f"{where}.noisy: expected true or false")
    return out


def _row_problems(i: int, row) -> list[str]:
    where = f"rows[{i}]"
    if not isinstance(row, dict):
        return [f"{where}: expected an object"]
    kind = row.get("kind")
    if kind not in KINDS:
        return [f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}"]
    fields, primary = KINDS[kind]
    key, metrics = row.get("key"), row.get("metrics")
    if not isinstance(key, dict):
        return [f"{where}.key: expected an object with {', '.join(fields)}"]
    out = [f"{where}.key.{f}: missing" for f in fields if f not in key]
    if not isinstance(metrics, dict) or primary not in metrics:
        return out + [f"{where}.metrics: expected an object holding at least {primary}"]
    for name, s in metrics.items():
        if name not in METRICS:
            out.append(f"{where}.metrics.{name}: unknown metric (known: {', '.join(METRICS)})")
        else:
            out += _stat_problems(f"{where}.metrics.{name}", s)
    derived = row.get("derived", {})
    if not isinstance(derived, dict) or not all(v is None or _is_number(v) for v in derived.values()):
        out.append(f"{where}.derived: expected an object of numbers")
    return out


def problems_in(doc) -> list[str]:
    """Everything wrong with a document, as 'path: problem' strings; empty when valid."""
    if not isinstance(doc, dict):
        return ["the top level is not a JSON object"]
    if doc.get("schema") != SCHEMA:
        return [f"schema is {doc.get('schema')!r}, not {SCHEMA!r}"]
    out = []
    if not isinstance(doc.get("benchmark"), str) or not doc["benchmark"]:
        out.append("benchmark: expected the name of the benchmark")
    env = doc.get("env")
    if not isinstance(env, dict):
        out.append("env: expected an object")
    else:
        for section, fields in ENV_FIELDS.items():
            if not isinstance(env.get(section), dict):
                out.append(f"env.{section}: expected an object with {', '.join(fields)}")
                continue
            out += [f"env.{section}.{f}: missing" for f in fields if f not in env[section]]
        out += [f"env.{f}: missing" for f in ENV_SCALARS if f not in env]
    if not isinstance(doc.get("config"), dict):
        out.append("config: expected an object")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        out.append("rows: expected a non-empty list")
    else:
        seen: dict[tuple, int] = {}
        for i, row in enumerate(rows):
            problems = _row_problems(i, row)
            out += problems
            if not problems:
                rid = row_id(row)
                if rid in seen:
                    out.append(f"rows[{i}]: the same {describe(row)} as rows[{seen[rid]}]")
                seen.setdefault(rid, i)
    return out


def load(path: str | Path) -> dict:
    """A validated results document, or ResultsError naming the file, the problem and the fix."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ResultsError(f"{p}: cannot read it ({e.strerror}); give the path of a results JSON file") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ResultsError(f"{p}: not JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                           "give a file that an mpirt benchmark wrote") from e
    problems = problems_in(doc)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ResultsError(f"{p}: not a valid {SCHEMA} results file: " + "; ".join(problems[:5]) + more +
                           "; re-run the benchmark with this mpirt to get a current file")
    return doc


def publish(doc: dict, path: Path, view: str) -> None:
    """A benchmark's results at ``path`` and their Markdown ``view`` beside them (.md), printed:
    the data first, the table a view of it."""
    write(doc, path)
    path.with_suffix(".md").write_text(view)
    print(view, flush=True)


def write(doc: dict, path: str | Path) -> None:
    """Write atomically: a reader never sees half a results file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(p)
