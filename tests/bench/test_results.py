"""The results schema, `mpirt bench compare` and `mpirt bench report`, on documents built
through the schema's writer; the commands run as users run them."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from docs import collective, doc, sweep, train
from PIL import Image

from mpirt.bench import compare, schema
from mpirt.bench.report import ReportConfig, ReportError, _allreduce_scaling, _colors, _train_panels, summary
from mpirt.bench.report import run as report

MPIRT = [sys.executable, "-m", "launcher.cli"]


def write(tmp_path, name, d) -> str:
    p = tmp_path / name
    p.write_text(json.dumps(d))
    return str(p)


def mpirt(*args):
    return subprocess.run([*MPIRT, *args], capture_output=True, text=True, timeout=120)


# --- schema ------------------------------------------------------------------------------

def test_stat_flags_noise_above_ten_percent():
    quiet, loud = schema.stat([10.0, 10.5, 9.5]), schema.stat([10.0, 13.0, 7.0])
    assert (quiet["median"], quiet["min"], quiet["max"], quiet["n"]) == (10.0, 9.5, 10.5, 3)
    assert quiet["noisy"] is False and loud["noisy"] is True
    assert loud["cv"] == pytest.approx(0.3)


def test_valid_document_has_no_problems():
    assert schema.problems_in(sweep()) == []


@pytest.mark.parametrize("damage, expected", [
    (lambda d: d.update(schema="mpirt.bench/0"), "schema is 'mpirt.bench/0'"),
    (lambda d: d["env"]["mpi"].pop("cuda_aware"), "env.mpi.cuda_aware: missing"),
    (lambda d: d["env"].pop("timestamp"), "env.timestamp: missing"),
    (lambda d: d["rows"][0]["metrics"].pop("busbw_gbs"), "rows[0].metrics: expected an object holding at least busbw_gbs"),
    (lambda d: d["rows"][0]["metrics"]["busbw_gbs"].update(median=99.0), "outside [min"),
    (lambda d: d["rows"][0]["metrics"]["busbw_gbs"].update(median="fast"), "expected a finite number"),
    (lambda d: d["rows"][1].update(key=d["rows"][0]["key"]), "the same collective np=2"),
    (lambda d: d["rows"][0].update(kind="latency"), "rows[0].kind: 'latency' is not one of"),
    (lambda d: d["rows"][0]["key"].pop("size"), "rows[0].key.size: missing"),
    (lambda d: d["rows"].clear(), "rows: expected a non-empty list"),
])
def test_every_problem_is_named_by_its_path(damage, expected):
    d = sweep()
    damage(d)
    assert any(expected in p for p in schema.problems_in(d)), schema.problems_in(d)


def test_load_names_file_problem_and_fix(tmp_path):
    with pytest.raises(schema.ResultsError, match=r"missing.json: cannot read it .*results JSON"):
        schema.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "mpirt.bench/1",\n  "rows": [}')
    with pytest.raises(schema.ResultsError, match=r"bad.json: not JSON \(line 2, column"):
        schema.load(bad)
    old = write(tmp_path, "old.json", {"schema": "mpirt.bench.allreduce/1", "results": []})
    with pytest.raises(schema.ResultsError, match=r"old.json: not a valid mpirt.bench/1 .*re-run the benchmark"):
        schema.load(old)


def test_writer_refuses_an_invalid_document(tmp_path):
    with pytest.raises(schema.ResultsError, match="refusing to write"):
        doc([{"kind": "train", "key": {"np": 1}, "metrics": {}}])


def test_publish_writes_the_results_and_their_view_beside_them(tmp_path, capsys):
    d = sweep()
    schema.publish(d, tmp_path / "r" / "sweep.json", "| table |\n")
    assert schema.load(tmp_path / "r" / "sweep.json") == d
    assert (tmp_path / "r" / "sweep.md").read_text() == "| table |\n"
    assert capsys.readouterr().out == "| table |\n\n"


# --- compare -----------------------------------------------------------------------------

def test_planted_twenty_percent_regression_fails_the_gate(tmp_path):
    base = write(tmp_path, "base.json", sweep())
    slow = sweep()
    row = slow["rows"][1]  # mpi, 4 KiB
    row["metrics"]["busbw_gbs"] = schema.stat([v * 0.8 for v in row["metrics"]["busbw_gbs"]["samples"]])
    new = write(tmp_path, "new.json", slow)
    proc = mpirt("bench", "compare", base, new, "--threshold", "5%")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    flagged = [line for line in proc.stdout.splitlines() if line.endswith("regression")]
    assert len(flagged) == 1 and "algo=mpi size=4096" in flagged[0] and " 0.800 " in flagged[0]
    assert "1 regression(s)" in proc.stdout


def test_change_within_noise_passes(tmp_path):
    base, new = sweep(jitter=0.10), sweep(scale=0.92, jitter=0.10)  # 8% slower, cv 10% on both sides
    verdicts = compare.compare(base, new, 0.05)
    assert {v.verdict for v in verdicts} == {"within noise"}
    proc = mpirt("bench", "compare", write(tmp_path, "b.json", base), write(tmp_path, "n.json", new))
    assert proc.returncode == 0, proc.stdout
    assert "0 regression(s)" in proc.stdout


def test_small_change_is_same_and_gain_is_improved():
    assert {v.verdict for v in compare.compare(sweep(), sweep(scale=0.98), 0.05)} == {"same"}
    assert {v.verdict for v in compare.compare(sweep(), sweep(scale=1.3), 0.05)} == {"improved"}


def test_lower_is_better_metrics_invert():
    base, slower = schema.stat([1.0, 1.0]), schema.stat([1.25, 1.25])
    perf, _, verdict = compare.judge(base, slower, "seconds", 0.05)
    assert perf == pytest.approx(0.8) and verdict == "regression"


def test_rows_on_one_side_are_listed_not_failed(tmp_path):
    base, new = sweep(), sweep()
    new["rows"].append(collective(2, "shm", 1024, [5.0, 5.1]))
    base["rows"].pop(0)
    verdicts = {v.row: v.verdict for v in compare.compare(base, new, 0.05)}
    assert "only in NEW" in verdicts.values() and "only in BASE" not in verdicts.values()
    assert sum(v == "only in NEW" for v in verdicts.values()) == 2


def test_compare_bad_input_is_exit_2_with_the_reason(tmp_path):
    base = write(tmp_path, "base.json", sweep())
    other = write(tmp_path, "launch.json", doc([{"kind": "launch", "key": {"case": "x", "hosts": 4, "ranks": 4,
                                                                         "system": "mpirt"},
                                                 "metrics": {"seconds": schema.stat([1.0])}}], "launch"))
    proc = mpirt("bench", "compare", base, other)
    assert proc.returncode == 2 and "compare results of the same benchmark" in proc.stderr
    proc = mpirt("bench", "compare", base, str(tmp_path / "nope.json"))
    assert proc.returncode == 2 and "nope.json: cannot read it" in proc.stderr
    proc = mpirt("bench", "compare", base, base, "--threshold", "lots")
    assert proc.returncode == 2 and "--threshold 'lots'" in proc.stderr
    disjoint = sweep()
    for r in disjoint["rows"]:
        r["key"]["np"] += 10
    proc = mpirt("bench", "compare", base, write(tmp_path, "d.json", disjoint))
    assert proc.returncode == 2 and "no row in common" in proc.stderr


def test_compare_json_output_and_environment_notes(tmp_path):
    other = copy.deepcopy(sweep())
    other["env"]["cpu"]["model"] = "Other CPU"
    other["config"]["collective"] = {"shared_buffers": True}  # the sweep on buffers the ranks share (-R)
    proc = mpirt("bench", "compare", write(tmp_path, "a.json", sweep()), write(tmp_path, "b.json", other), "--json")
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert out["env_differences"] == ["CPU: Test CPU -> Other CPU", "collective on shared buffers: None -> True"]
    assert len(out["rows"]) == len(sweep()["rows"]) and out["threshold"] == 0.05
    proc = mpirt("bench", "compare", write(tmp_path, "a.json", sweep()), write(tmp_path, "b.json", other))
    assert "note: the runs differ: CPU: Test CPU -> Other CPU; collective on shared buffers: None -> True" in \
        proc.stdout


# --- report ------------------------------------------------------------------------------

def test_report_writes_valid_pngs_and_markdown_tables(tmp_path):
    a = write(tmp_path, "cluster-a.json", sweep())
    b = write(tmp_path, "cluster-b.json", sweep(scale=0.5))
    proc = mpirt("bench", "report", a, b, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    for name in ("busbw.png", "efficiency.png", "throughput.png"):
        with Image.open(tmp_path / "out" / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
        with Image.open(tmp_path / "out" / name) as im:  # not a blank canvas
            assert len(im.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 10
    md = (tmp_path / "out" / "summary.md").read_text()
    assert "![busbw](busbw.png)" in md
    assert md.count("| 1 KiB |") == 2 and md.count("| 4 KiB |") == 2  # one collective table per file
    train_lines = [line for line in md.splitlines() if line.startswith("| cluster-")]
    assert len(train_lines) == 16  # 2 files x 2 world sizes x 2 scalings x 2 systems
    assert "| cluster-b | strong | 2 | mpirt | 64 | 90 [89.1–90.9] | 0.90 | 20% |" in md


def test_summary_marks_noisy_rows_and_oversubscription():
    d = sweep(jitter=0.2)
    d["env"]["hosts"]["oversubscribed"] = True
    text = summary([("x", d)])
    assert "⚠ cv 20%" in text and "oversubscribed" in text


def test_report_bad_input(tmp_path):
    good = write(tmp_path, "good.json", sweep())
    proc = mpirt("bench", "report", good, str(tmp_path / "missing.json"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "missing.json: cannot read it" in proc.stderr
    assert not (tmp_path / "o" / "summary.md").exists()
    (tmp_path / "x").mkdir()
    same = write(tmp_path / "x", "good.json", sweep())
    with pytest.raises(ReportError, match="same name"):
        report(ReportConfig(results=(good, same), out=str(tmp_path / "o")))
    blocked = tmp_path / "file"
    blocked.write_text("")
    proc = mpirt("bench", "report", good, "--out", str(blocked / "sub"))
    assert proc.returncode == 2 and "cannot create it" in proc.stderr


def test_train_rows_only_report_without_collective_plot(tmp_path):
    d = doc([train(1, "weak", "mpirt", [100.0, 101.0], efficiency=1.0),
             train(2, "weak", "mpirt", [190.0, 191.0], efficiency=0.95)])
    written = report(ReportConfig(results=(write(tmp_path, "t.json", d),), out=str(tmp_path / "o")))
    assert sorted(p.name for p in written) == ["efficiency.png", "summary.md", "throughput.png"]


def test_plots_keep_one_colour_per_system_and_a_panel_per_model():
    assert _colors(["ddp", "mpirt@4", "mpirt", "mpirt@25", "compute-only"]) == {
        "mpirt": "tab:blue", "ddp": "tab:orange", "compute-only": "tab:gray",
        "mpirt@25": "tab:green", "mpirt@4": "tab:red"}
    collectives_only = doc([collective(2, "mpi", 1024, [1.0, 1.1])])
    panels = _train_panels([("a", sweep()), ("c", collectives_only), ("b", sweep(scale=0.5))])
    assert [label for label, _ in panels] == ["a", "b"]
    assert all(r["kind"] == "train" for _, rows in panels for r in rows) and len(panels[0][1]) == 8


def test_allreduce_scaling_is_drawn_only_across_world_sizes():
    one_size = [("a", doc([collective(2, "mpi", 4096, [2.0], efficiency=1.0)]))]
    assert _allreduce_scaling(one_size) == ({}, set())
    sweep_ = doc([collective(2, "mpi", 4096, [2.0], efficiency=1.0), collective(4, "mpi", 4096, [1.5], efficiency=0.75),
                  collective(4, "mpi", 1024, [1.0], efficiency=0.5),
                  collective(2, "ring", 4096, [3.0], efficiency=1.0)])
    assert _allreduce_scaling([("a", sweep_)]) == ({"mpi": [(2, 1.0), (4, 0.75)], "ring": [(2, 1.0)]}, {4096})
