"""`mpirt bench report RESULTS.json... --out DIR`: plots and a Markdown summary, both views of
mpirt.bench/1 documents. With several files, each line and table row says which file it is
from (the file's name), so runs from two clusters or two images sit side by side."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mpirt.bench import schema


class ReportError(ValueError):
    pass


@dataclass(frozen=True)
class ReportConfig:
    results: tuple[str, ...]
    out: str


def fmt_size(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def _fmt(v: float) -> str:
    """Three significant digits, without exponents for the magnitudes benchmarks produce."""
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _cell(s: dict) -> str:
    text = f"{_fmt(s['median'])} [{_fmt(s['min'])}–{_fmt(s['max'])}]"
    return text + (f" ⚠ cv {s['cv']:.0%}" if s["noisy"] else "")


def _num(v, fmt: str = ".2f") -> str:
    return "–" if v is None else format(v, fmt)


def _rows(docs, kind):
    return [(label, r) for label, d in docs for r in d["rows"] if r["kind"] == kind]


def environment(label: str, doc: dict) -> list[str]:
    e = doc["env"]
    gpus = ", ".join(sorted({g["name"] for g in e["gpus"]})) or "none"
    h = e["hosts"]
    lines = [f"### {label}: {doc['benchmark']}", "",
             f"- mpirt {e['mpirt']['version']} (commit {e['mpirt']['git_commit']})",
             f"- MPI: {e['mpi']['library'] or e['mpi']['impl'] + ' ' + e['mpi']['version']}; CUDA-aware: "
             f"{'yes' if e['mpi']['cuda_aware'] else 'no'}",
             f"- network tier: {e['network']['tier']}; variables set: " +
             (", ".join(f"{k}={v['value']} ({v['source']})" for k, v in e["network"]["env"].items()) or "none"),
             f"- CPU: {e['cpu']['model']} ({e['cpu']['cores']} cores); GPUs: {gpus}",
             f"- hosts: {h['count']} ({', '.join(h['names'])}), {h['slots']} slots" +
             (" — **oversubscribed: more ranks than cores, so ranks share cores**" if h["oversubscribed"] else ""),
             f"- command: `{e['command']}`", f"- taken: {e['timestamp']}", ""]
    return lines


def collective_tables(docs) -> list[str]:
    rows = _rows(docs, "collective")
    if not rows:
        return []
    out = ["## Collective sweep", "",
           "busbw in GB/s (nccl-tests definition), median [min–max] over repeats; ⚠ marks a coefficient of "
           "variation above 10%. `vs mpi`: busbw over MPI_Allreduce's at the same size and world size.", ""]
    groups = defaultdict(dict)
    for label, r in rows:
        k = r["key"]
        groups[(label, k["np"], k["mode"], k["dtype"], k["op"], k["device"])][(k["size"], k["algo"])] = r
    for (label, n, mode, dtype, op, device), cells in sorted(groups.items()):
        algos = sorted({a for _, a in cells}, key=lambda a: (a != "mpi", a))
        sizes = sorted({s for s, _ in cells})
        out += [f"### {label}: {n} ranks, {dtype} {op}, {mode}, {device}", "",
                "| size | " + " | ".join(f"{a} busbw" for a in algos) + " | " +
                " | ".join(f"{a} vs mpi" for a in algos if a != "mpi") + " |",
                "|---:|" + "---:|" * (2 * len(algos) - 1)]
        for size in sizes:
            got = [cells.get((size, a)) for a in algos]
            out.append(f"| {fmt_size(size)} | " + " | ".join(_cell(r["metrics"]["busbw_gbs"]) if r else "–"
                                                         for r in got) + " | " +
                       " | ".join(_num(r["derived"].get("vs_mpi")) if r else "–"
                                  for a, r in zip(algos, got) if a != "mpi") + " |")
        out.append("")
    return out


def train_table(docs) -> list[str]:
    rows = _rows(docs, "train")
    if not rows:
        return []
    out = ["## Data-parallel training", "",
           "samples/s median [min–max] over repeats. Efficiency: throughput over world size × the 1-rank "
           "throughput (1.00 is linear). Comm share: the part of a step that communication adds beyond "
           "compute-only, 1 − t_compute / t_step. `vs DDP`: mpirt's throughput over torch DDP's.", "",
           "| file | scaling | ranks | system | global batch | samples/s | efficiency | comm share | vs DDP |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for label, r in sorted(rows, key=lambda lr: (lr[0], lr[1]["key"]["scaling"], lr[1]["key"]["np"],
                                                 lr[1]["key"]["system"])):
        k, m, d = r["key"], r["metrics"], r["derived"]
        share = f"{m['comm_share']['median']:.0%}" if "comm_share" in m else "–"
        out.append(f"| {label} | {k['scaling']} | {k['np']} | {k['system']} | {r.get('info', {}).get('global_batch', '–')}"
                   f" | {_cell(m['samples_per_s'])} | {_num(d.get('efficiency'))} | {share} | "
                   f"{_num(d.get('vs_ddp'))} |")
    return out + [""]


def other_tables(docs) -> list[str]:
    out = []
    for kind in ("memcpy", "launch"):
        rows = _rows(docs, kind)
        if not rows:
            continue
        fields = schema.KINDS[kind][0]
        metrics = sorted({m for _, r in rows for m in r["metrics"]})
        out += [f"## {kind}", "", "| file | " + " | ".join(fields) + " | " + " | ".join(metrics) + " |",
                "|---|" + "---|" * len(fields) + "---:|" * len(metrics)]
        for label, r in rows:
            out.append(f"| {label} | " + " | ".join(str(r["key"].get(f, "")) for f in fields) + " | " +
                       " | ".join(_cell(r["metrics"][m]) if m in r["metrics"] else "–" for m in metrics) + " |")
        out.append("")
    return out


def summary(docs: list[tuple[str, dict]]) -> str:
    lines = ["# Benchmark summary", ""]
    for label, doc in docs:
        lines += environment(label, doc)
    lines += collective_tables(docs) + train_table(docs) + other_tables(docs)
    return "\n".join(lines).rstrip() + "\n"


def _pyplot():
    try:
        import matplotlib
    except ImportError as e:
        raise ReportError("plots need matplotlib: pip install 'mpirt[report]' (or pip install matplotlib)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, xs, stats, label, **kw):
    med = [s["median"] for s in stats]
    lo = [s["median"] - s["min"] for s in stats]
    hi = [s["max"] - s["median"] for s in stats]
    ax.errorbar(xs, med, yerr=[lo, hi], label=label, marker="o", markersize=3, capsize=2, **kw)


def _rank_ticks(ax) -> None:
    """World sizes are whole numbers: tick exactly the ones plotted."""
    xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
    if xs:
        ax.set_xticks(xs)


def plot_busbw(plt, docs, path: Path) -> bool:
    rows = _rows(docs, "collective")
    if not rows:
        return False
    panels = sorted({(label, r["key"]["np"]) for label, r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False, sharey=True)
    for ax, (label, n) in zip(axes[0], panels):
        lines = defaultdict(list)
        for lb, r in rows:
            if lb == label and r["key"]["np"] == n:
                lines[r["key"]["algo"]].append(r)
        for algo, rs in sorted(lines.items()):
            rs.sort(key=lambda r: r["key"]["size"])
            _errorbar(ax, [r["key"]["size"] for r in rs], [r["metrics"]["busbw_gbs"] for r in rs], algo)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("size per rank (bytes)")
        ax.set_title(f"{label}: {n} ranks" if len(docs) > 1 else f"{n} ranks")
        ax.grid(True, alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("busbw (GB/s)")
    fig.suptitle("Allreduce bus bandwidth by algorithm (median, min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _colors(systems) -> dict[str, str]:
    """One colour per system, the same in every panel: mpirt blue, DDP orange, compute-only
    grey; the rest (mpirt at other bucket sizes) from a fixed list in name order."""
    fixed = {"mpirt": "tab:blue", "ddp": "tab:orange", "compute-only": "tab:gray"}
    spare = ["tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    others = sorted(s for s in set(systems) if s not in fixed)
    return {**fixed, **{s: spare[i % len(spare)] for i, s in enumerate(others)}}


def _grid(plt, n: int, cols: int, width: float, height: float):
    """``n`` panels, ``cols`` a row; the unused ones hidden."""
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _train_panels(docs) -> list[tuple[str, list[dict]]]:
    """(results file, its training rows) for each file that has some: one model a panel, as
    the models' throughputs differ by orders of magnitude."""
    panels = []
    for label, doc in docs:
        rows = [r for r in doc["rows"] if r["kind"] == "train"]
        if rows:
            panels.append((label, rows))
    return panels


def _finish(ax, title: str, ylabel: str) -> None:
    _rank_ticks(ax)
    ax.set_title(title)
    ax.set_xlabel("ranks")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def _allreduce_scaling(docs) -> tuple[dict[str, list[tuple[int, float]]], set[int]]:
    """Per algorithm (and file, with several), busbw efficiency against world size at each
    file's largest size, where bandwidth and not latency decides; ``{}`` unless some line
    has two world sizes or more (one point says nothing about scaling)."""
    big = defaultdict(list)
    for lb, r in _rows(docs, "collective"):
        if r["derived"].get("efficiency") is not None:
            big[lb].append(r)
    lines, sizes = defaultdict(list), set()
    for lb, rs in big.items():
        top = max(r["key"]["size"] for r in rs)
        sizes.add(top)
        for r in rs:
            if r["key"]["size"] == top:
                name = r["key"]["algo"] + (f" ({lb})" if len(big) > 1 else "")
                lines[name].append((r["key"]["np"], r["derived"]["efficiency"]))
    if all(len(pts) < 2 for pts in lines.values()):
        return {}, set()
    return {name: sorted(pts) for name, pts in sorted(lines.items())}, sizes


def plot_efficiency(plt, docs, path: Path) -> bool:
    """Training efficiency, one panel per results file (colour: system, line: weak solid,
    strong dashed), and the allreduce's where a sweep covered several world sizes."""
    panels = _train_panels(docs)
    coll, sizes = _allreduce_scaling(docs)
    if not panels and not coll:
        return False
    colors = _colors(r["key"]["system"] for _, rows in panels for r in rows)
    fig, axes = _grid(plt, len(panels) + bool(coll), 2, 5.5, 4)
    for ax, (label, rows) in zip(axes, panels):
        lines = defaultdict(list)
        for r in rows:
            if r["key"]["system"] != "compute-only" and r["derived"].get("efficiency") is not None:
                lines[(r["key"]["system"], r["key"]["scaling"])].append((r["key"]["np"], r["derived"]["efficiency"]))
        for (system, scaling), pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{system} {scaling}",
                    color=colors[system], linestyle="--" if scaling == "strong" else "-")
        _finish(ax, f"{label}: training efficiency" if len(docs) > 1 else "Training efficiency",
                "throughput / (n × 1-rank throughput)")
    if coll:
        ax = axes[-1]
        for name, pts in coll.items():
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        _finish(ax, f"Allreduce at {', '.join(fmt_size(n) for n in sorted(sizes))}",
                "busbw / busbw at the fewest ranks")
    for ax in axes:  # after the ticks, which follow the plotted points
        ax.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_throughput(plt, docs, path: Path) -> bool:
    """Samples/s against ranks, a row per results file and a column per scaling; compute-only
    (no communication) dotted: the ceiling both runtimes are measured against."""
    panels = _train_panels(docs)
    if not panels:
        return False
    colors = _colors(r["key"]["system"] for _, rows in panels for r in rows)
    scalings = sorted({r["key"]["scaling"] for _, rows in panels for r in rows}, reverse=True)
    fig, axes = _grid(plt, len(panels) * len(scalings), len(scalings), 5.5, 3.8)
    for i, (label, rows) in enumerate(panels):
        for j, scaling in enumerate(scalings):
            ax = axes[i * len(scalings) + j]
            lines = defaultdict(list)
            for r in rows:
                if r["key"]["scaling"] == scaling:
                    lines[r["key"]["system"]].append(r)
            for system, rs in sorted(lines.items()):
                rs.sort(key=lambda r: r["key"]["np"])
                _errorbar(ax, [r["key"]["np"] for r in rs], [r["metrics"]["samples_per_s"] for r in rs], system,
                          color=colors[system], linestyle=":" if system == "compute-only" else "-")
            if not lines:
                ax.axis("off")
                continue
            _finish(ax, f"{label}: {scaling} scaling" if len(docs) > 1 else f"{scaling} scaling", "samples/s")
    fig.suptitle("Training throughput: mpirt vs torch DDP (median, min–max)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


PLOTS = {"busbw.png": plot_busbw, "efficiency.png": plot_efficiency, "throughput.png": plot_throughput}


def run(cfg: ReportConfig) -> list[Path]:
    docs = [(Path(p).stem, schema.load(p)) for p in cfg.results]
    labels = [label for label, _ in docs]
    if len(set(labels)) != len(labels):
        raise ReportError("two results files have the same name; their lines could not be told apart: rename one")
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"--out {out}: cannot create it ({e.strerror}); choose a writable directory") from e
    plt = _pyplot()
    written = []
    for name, plot in PLOTS.items():
        tmp = out / f".{name}.tmp.png"
        if plot(plt, docs, tmp):
            tmp.replace(out / name)
            written.append(out / name)
    text = summary(docs)
    text += "\n## Plots\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in written) if written else ""
    tmp = out / ".summary.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "summary.md")
    return written + [out / "summary.md"]
