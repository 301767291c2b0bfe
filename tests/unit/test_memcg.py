"""The OOM counter of a memory cgroup (v1, v2, hybrid, inside a container) and the post-mortem
that compares it across a job."""

from pathlib import Path

from launcher import postmortem
from launcher.detect import memcg
from launcher.detect.memcg import OomCounter

V2_EVENTS = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
HYBRID = "9:name=systemd:/\n4:memory:/process_api/8b9e\n1:cpu:/\n0::/\n"


def tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_parse_both_formats():
    assert memcg.parse(V2_EVENTS) == 2 and memcg.parse(V1_OOM_CONTROL) == 1
    assert memcg.parse("oom 3\n") is None and memcg.parse("oom_kill x\n") is None


def test_v2_host_reads_the_process_cgroup(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/pod1/c1\n",
                           "sys/fs/cgroup/kubepods/pod1/c1/memory.events": V2_EVENTS})
    assert memcg.read(root) == OomCounter(str(root / "sys/fs/cgroup/kubepods/pod1/c1/memory.events"), 2)


def test_container_falls_back_to_its_own_cgroup_root(tmp_path):
    """Without a cgroup namespace the path is the host's, but the mount is the container's."""
    root = tree(tmp_path, {"proc/self/cgroup": "0::/kubepods/pod1/c1\n", "sys/fs/cgroup/memory.events": V2_EVENTS})
    assert memcg.read(root).path == str(root / "sys/fs/cgroup/memory.events")


def test_hybrid_host_uses_the_v1_memory_controller(tmp_path):
    root = tree(tmp_path, {"proc/self/cgroup": HYBRID,
                           "sys/fs/cgroup/memory/process_api/8b9e/memory.oom_control": V1_OOM_CONTROL,
                           "sys/fs/cgroup/unified/memory.events": V2_EVENTS})
    assert memcg.read(root) == OomCounter(str(root / "sys/fs/cgroup/memory/process_api/8b9e/memory.oom_control"), 1)


def test_no_memory_controller_is_none(tmp_path):
    assert memcg.read(tree(tmp_path, {"proc/self/cgroup": "0::/\n"})) is None
    assert memcg.read(tmp_path / "nothing") is None
    assert memcg.candidates(tmp_path, "garbage\n") == []


def test_this_machine_has_a_counter_or_says_none():
    found = memcg.read()
    assert found is None or (Path(found.path).is_file() and found.kills >= 0)


def test_finding_only_for_a_counter_that_rose():
    before = OomCounter("/sys/fs/cgroup/memory.events", 1)
    assert postmortem.finding("w1", before, 1) is None and postmortem.finding("w1", before, None) is None
    line = postmortem.finding("w1", before, 3)
    assert line.startswith("the kernel's OOM killer killed 2 processes on w1 during this job (oom_kill 1 -> 3 in "
                           "/sys/fs/cgroup/memory.events); give the pod more memory")


def test_findings_ask_every_host_in_order():
    before = {"w0": OomCounter("/a", 0), "w1": OomCounter("/b", 0), "w2": OomCounter("/c b", 5)}
    asked = []

    def read_now(host, counter):  # as the launcher does it: this command over ssh to the host
        asked.append((host, postmortem.read_command(counter)))
        return memcg.parse({"w0": "oom_kill 0\n", "w1": "oom_kill 1\n", "w2": "oom_kill 6\n"}[host])

    found = postmortem.findings(before, read_now)
    assert [f.split(" on ")[1].split()[0] for f in found] == ["w1", "w2"]
    assert sorted(asked) == [("w0", "cat -- /a"), ("w1", "cat -- /b"), ("w2", "cat -- '/c b'")]
    assert postmortem.findings({}, read_now) == []


def test_limit_beside_either_counter(tmp_path):
    v2 = tree(tmp_path / "a", {"memory.events": V2_EVENTS, "memory.max": "8589934592\n"})
    assert memcg.limit(OomCounter(str(v2 / "memory.events"), 0)) == 8 << 30
    tree(v2, {"memory.max": "max\n"})
    assert memcg.limit(OomCounter(str(v2 / "memory.events"), 0)) is None
    v1 = tree(tmp_path / "b", {"memory.oom_control": V1_OOM_CONTROL, "memory.limit_in_bytes": "9223372036854771712\n"})
    assert memcg.limit(OomCounter(str(v1 / "memory.oom_control"), 0)) is None
    tree(v1, {"memory.limit_in_bytes": "268435456\n"})
    assert memcg.limit(OomCounter(str(v1 / "memory.oom_control"), 0)) == 256 << 20


def test_doctor_warns_in_a_cgroup_where_the_oom_killer_struck(memory_cgroup):
    """A real OOM kill in a memory-limited cgroup, then `mpirt doctor` run in the same cgroup."""
    import json
    import subprocess
    import sys

    cg = memory_cgroup(256 << 20)
    hog = subprocess.run(cg.wrap([sys.executable, "-c", "x = [b'1' * (32 << 20) for _ in range(64)]"]),
                         capture_output=True, timeout=60)
    assert hog.returncode == -9
    doc = json.loads(subprocess.run(cg.wrap(["mpirt", "doctor", "--json"]), capture_output=True, text=True,
                                    timeout=180).stdout)
    memory = next(c for c in doc["checks"] if c["name"] == "memory")
    assert memory["status"] == "warn" and memory["detail"].startswith("limit 0.2 GiB; the OOM killer has killed 1 "
                                                                      "process in this cgroup (")
    assert "resources.limits.memory" in memory["fix"]
