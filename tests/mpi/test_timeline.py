"""The Chrome-trace timeline of data-parallel training, with real ranks: one file for all
ranks whose events follow the runtime's order, and each rank's own part when a rank fails."""

import json
import sys

import pytest

from conftest import RANKS

pytestmark = pytest.mark.mpi


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_one_file_with_every_rank_bucket_and_step_in_order(mpiexec, tmp_path, np_):
    path = tmp_path / "timeline.json"
    proc = mpiexec(np_, [sys.executable, "-m", "mpirt", str(RANKS / "timeline_cases.py"), str(path), "ok"])
    buckets = int(proc.stdout.strip().splitlines()[-1])
    assert buckets >= 3
    doc = json.loads(path.read_text())
    assert doc["otherData"] == {"writer": "mpirt", "ranks": np_, "dropped_events": 0}
    events = doc["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert sorted(names) == list(range(np_)) and all(names[r].startswith(f"rank {r} (") for r in names)
    for rank in range(np_):
        mine = [e for e in events if e["pid"] == rank and e["ph"] != "M"]
        for step in range(4):
            at = [e for e in mine if e["args"]["step"] == step]
            ready = {e["name"]: e for e in at if e["ph"] == "i"}
            reduced = {e["name"]: e for e in at if e["ph"] == "X" and e["name"].startswith("allreduce")}
            wait = [e for e in at if e["name"] == "wait for gradients"]
            assert sorted(ready) == sorted(f"bucket {k} ready" for k in range(buckets)) and len(wait) == 1
            bcast = [e for e in at if e["name"] == "broadcast buffers"]
            if np_ == 1:  # nothing to reduce or broadcast on one rank
                assert not reduced and not bcast
                continue
            assert sorted(reduced) == sorted(f"allreduce bucket {k}" for k in range(buckets))
            # BatchNorm's buffers: a snapshot once bucket 0 is ready, sent ahead of its allreduce
            assert len(bcast) == 1 and bcast[0]["args"]["root"] == 0
            first = reduced["allreduce bucket 0"]
            start, end = bcast[0]["ts"], bcast[0]["ts"] + bcast[0]["dur"]
            assert ready["bucket 0 ready"]["ts"] <= start <= end <= first["ts"] + 1e-3
            for k in range(buckets):
                r, a = ready[f"bucket {k} ready"], reduced[f"allreduce bucket {k}"]
                assert r["ts"] <= a["ts"] and a["dur"] > 0 and a["args"]["bytes"] > 0
                if k:  # buckets are reduced in index order on every rank
                    prev = reduced[f"allreduce bucket {k - 1}"]
                    assert prev["ts"] + prev["dur"] <= a["ts"] + 1e-3
            last_end = max(a["ts"] + a["dur"] for a in reduced.values())
            assert wait[0]["ts"] + wait[0]["dur"] >= last_end - 1e-3  # the step waited for every bucket


@pytest.mark.parametrize("np_", [2, 4])
def test_fp16_buckets_are_cast_before_and_cast_back_after_their_allreduce(mpiexec, tmp_path, np_):
    path = tmp_path / "timeline.json"
    proc = mpiexec(np_, [sys.executable, "-m", "mpirt", str(RANKS / "timeline_cases.py"), str(path), "fp16"])
    buckets = int(proc.stdout.strip().splitlines()[-1])
    events = json.loads(path.read_text())["traceEvents"]
    for rank in range(np_):
        threads = {e["tid"]: e["args"]["name"] for e in events
                   if e["pid"] == rank and e["ph"] == "M" and e["name"] == "thread_name"}
        for step in range(4):
            at = {e["name"]: e for e in events if e["pid"] == rank and e["ph"] == "X" and e["args"]["step"] == step}
            for k in range(buckets):
                cast, reduced, back = at[f"cast bucket {k}"], at[f"allreduce bucket {k}"], at[f"cast back bucket {k}"]
                assert threads[cast["tid"]] == "MainThread" and threads[back["tid"]].startswith("mpirt-cast")
                assert cast["ts"] + cast["dur"] <= reduced["ts"] + 1e-3  # the wire copy before it is sent
                assert reduced["ts"] + reduced["dur"] <= back["ts"] + 1e-3  # the cast back after it arrived
                if k:  # the communication thread goes on while the last bucket is cast back
                    prev = at[f"allreduce bucket {k - 1}"]
                    assert prev["ts"] + prev["dur"] <= reduced["ts"] + 1e-3
            wait = at["wait for gradients"]
            last = max(at[f"cast back bucket {k}"]["ts"] + at[f"cast back bucket {k}"]["dur"] for k in range(buckets))
            assert wait["ts"] + wait["dur"] >= last - 1e-3  # the step waited for every cast back


def test_a_failing_rank_writes_its_own_part(mpiexec, tmp_path):
    path = tmp_path / "timeline.json"
    proc = mpiexec(2, [sys.executable, "-m", "mpirt", str(RANKS / "timeline_cases.py"), str(path), "raise"],
                   check=False)
    assert proc.returncode != 0
    assert not path.exists()  # no collective write while a rank is failing
    own = json.loads((tmp_path / "timeline.json.rank-1").read_text())
    steps = {e["args"]["step"] for e in own["traceEvents"] if e["ph"] != "M"}
    assert steps == {0, 1} and own["otherData"]["ranks"] == 1
