"""What the training benchmarks that compare mpirt with itself share (buckets.py, compile.py):
one `mpirt.bench.train` job per model, on 2 ranks here or on 2 rate-limited namespace hosts
(the tests' cluster), its rank-0 JSON turned into mpirt.bench/1 rows."""

from __future__ import annotations

import statistics
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))

from netns import namespaces_usable, rate_limited  # noqa: E402  (the tests' namespace cluster)

from launcher.mpi import detect, find_mpirun  # noqa: E402
from mpirt.bench import environment, schema  # noqa: E402
from mpirt.bench.scaling import json_in  # noqa: E402
from mpirt.bench.schema import stat  # noqa: E402

HERE = {"count": 1, "slots": 2, "names": ["localhost"], "oversubscribed": False, "nodes_seen": 1}


def rows_of(doc: dict, model: str) -> list[dict]:
    """One row per system the job trained, with mpirt's bucket count where it has one."""
    return [{"kind": "train", "key": {"np": doc["ranks"], "scaling": "weak", "system": r["system"], "model": model,
                                      "device": "cpu"},
             "metrics": {"samples_per_s": stat([r["global_batch"] / t for t in r["step_s"]]),
                         "step_s": stat(r["step_s"])},
             **({"info": {"buckets": r["buckets"]}} if "buckets" in r else {})} for r in doc["results"]]


def measure(launch, where: str, models, argv_of) -> tuple[list[dict], dict]:
    """Every model's rows, each from one job that ``launch(argv_of(model))`` runs; and rank 0's
    view of its environment."""
    rows, view = [], {}
    for model in models:
        proc = launch(argv_of(model))
        if proc.returncode != 0:
            sys.exit(f"the {model} job {where} failed:\n{proc.stderr[-3000:]}")
        doc = json_in(proc.stdout, lambda d: "results" in d and "rank_view" in d)
        rows += rows_of(doc, model)
        view = doc["rank_view"]
        print(f"{where}, {model}: " + ", ".join(f"{r['system']} {statistics.median(r['step_s']) * 1e3:.0f} ms"
                                                for r in doc["results"]), flush=True)
    return rows, view


def launch_here(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["mpirt", "launch", "-np", "2", "--no-tag-output", "--", *argv], capture_output=True,
                          text=True, timeout=3600)


@contextmanager
def namespace_hosts(rate: str, slots: int, prefix: str, watched):
    """2 namespace hosts with ``slots`` ranks each, links limited to ``rate``: yields a launch
    function, the variables in ``watched`` the launcher sets on the ranks, and the hosts' record
    for the results."""
    reason = namespaces_usable()
    if reason:
        sys.exit(f"cannot run across namespace hosts: {reason}")
    with rate_limited(2, rate, prefix) as (c, names):
        hosts = {"count": 2, "slots": 2 * slots, "names": list(names), "oversubscribed": slots > 1, "nodes_seen": 2}
        yield (lambda argv: c.launch(names, argv, "--no-tag-output", timeout=3600, slots=slots),
               c.rank_env(names, watched, slots=slots), hosts)


def launcher_note(env: dict, watched) -> list[str]:
    """The variables in ``watched`` that the launcher set on the ranks, as Markdown lines."""
    mine = {k: v["value"] for k, v in env["network"]["env"].items() if k in watched}
    return ["", "Set by the launcher on every rank, among others: " +
            ", ".join(f"`{k}={v}`" for k, v in sorted(mine.items()))] if mine else []


def write(benchmark: str, placement: str, title: str, rows: list[dict], view: dict, hosts: dict, added: dict,
          config: dict, out: Path, markdown) -> None:
    """results/<benchmark>-<placement>.json and its Markdown view, ``markdown(doc, title)``."""
    env = environment.collect(impl=detect(find_mpirun()), hosts=hosts, launcher_added=added, rank_view=view,
                              argv=["python", f"benchmarks/{benchmark}.py", *sys.argv[1:]])
    doc = schema.document(benchmark, env, config, rows)
    schema.publish(doc, out / f"{benchmark}-{placement}.json", markdown(doc, title))


def run_placements(args, run: dict) -> int:
    """Each placement ``args.placements`` names (a comma list), by its function in ``run``."""
    chosen = args.placements.split(",")
    if set(chosen) - set(run):
        sys.exit(f"--placements {args.placements}: choose from {', '.join(run)}")
    for placement in chosen:
        run[placement](args)
    return 0
