"""Host parsing: both hostfile dialects, lists, slot defaults, and every rejection naming file:line."""

import pytest

from launcher.hosts import Host, HostError, default_slots, parse_hostfile, parse_list, render, slots_from_gpus

OPERATOR = """# written by mpi-operator
job-worker-0.job.default.svc slots=4
job-worker-1.job.default.svc slots=4   # trailing comment

10.0.0.7 slots=2 max_slots=8
"""


def test_openmpi_dialect_with_comments_and_blank_lines():
    hosts = parse_hostfile(OPERATOR, "/etc/mpi/hostfile")
    assert hosts == [Host("job-worker-0.job.default.svc", 4, "/etc/mpi/hostfile:2"),
                     Host("job-worker-1.job.default.svc", 4, "/etc/mpi/hostfile:3"),
                     Host("10.0.0.7", 2, "/etc/mpi/hostfile:5")]


def test_hydra_dialect_and_bare_hosts_take_the_default():
    hosts = parse_hostfile("a-0.job:8\nb\n", "hf", default_slots=3)
    assert [(h.name, h.slots) for h in hosts] == [("a-0.job", 8), ("b", 3)]


def test_lists_from_volcano_and_mpi_host():
    hosts = parse_list("job-worker-0.job,job-worker-1.job:2,", "VC_WORKER_HOSTS", default_slots=1)
    assert [(h.name, h.slots, h.origin) for h in hosts] == [
        ("job-worker-0.job", 1, "VC_WORKER_HOSTS[0]"), ("job-worker-1.job", 2, "VC_WORKER_HOSTS[1]")]


@pytest.mark.parametrize("text,message", [
    ("good slots=2\nbad slots=x\n", "hf:2: slots for 'bad' is 'x', not a whole number; write e.g. bad slots=4"),
    ("w slots=0\n", "hf:1: 'w' has 0 slots; give at least 1"),
    ("w:-1\n", "hf:1: slots for 'w' is '-1', not a whole number; write e.g. w:4"),
    ("w max_slots=a\n", "hf:1: slots for 'w' is 'a', not a whole number; write e.g. w max_slots=4"),
    ("w slots=2 extra\n", "hf:1: cannot read 'extra' after 'w'"),
    ("a\nb\nA\n", "hf:3: 'A' is listed again (first at hf:1); list each host once"),
    ("-oProxyCommand=x\n", "hf:1: host name '-oProxyCommand=x' starts with '-'"),
    ("w;reboot slots=1\n", "hf:1: host name 'w;reboot' contains ';'"),
    ("$(id):2\n", "hf:1: host name '$(id)' contains"),
    ("bad_name\n", "contains '_'"),
    ("-bad.example\n", "starts with '-'"),
    ("ok.-bad\n", "has an invalid label '-bad'"),
    ("fe80::1\n", "looks like an IPv6 address"),
    ("fe80::1 slots=2\n", "hf:1: 'fe80::1' looks like an IPv6 address"),
    ("w:2 slots=3\n", "mixes 'host:N' and 'slots='"),
    ("# only comments\n\n", "hf: no hosts in the file"),
])
def test_rejections_name_the_line_and_the_fix(text, message):
    with pytest.raises(HostError, match=None) as info:
        parse_hostfile(text, "hf")
    assert message in str(info.value)


def test_whitespace_inside_a_list_entry_is_rejected():
    with pytest.raises(HostError, match=r"MPI_HOST\[1\]: cannot read 'b'"):
        parse_list("a,x b", "MPI_HOST")


def test_default_slots_order():
    none = lambda: 0  # noqa: E731
    assert default_slots("3", {}, none) == (3, "--slots")
    assert default_slots(None, {"OMPI_MCA_orte_set_default_slots": "8"}, lambda: 4) == (
        8, "OMPI_MCA_orte_set_default_slots")
    assert default_slots("auto", {"I_MPI_PERHOST": "2"}, none) == (2, "I_MPI_PERHOST")
    assert default_slots("auto", {}, lambda: 4) == (4, "4 GPU(s) on this machine")
    assert default_slots(None, {}, none) == (1, "default")
    with pytest.raises(HostError, match="--slots 'x'"):
        default_slots("x", {}, none)
    with pytest.raises(HostError, match="OMPI_MCA_orte_set_default_slots: .* write e.g. OMPI_MCA_orte_set_default_slots=4"):
        default_slots(None, {"OMPI_MCA_orte_set_default_slots": "zero"}, none)


def test_render_both_dialects():
    hosts = [Host("a", 2, "x"), Host("b", 1, "y")]
    assert render(hosts, "openmpi") == "a slots=2\nb slots=1\n"
    assert render(hosts, "mpich") == render(hosts, "intel") == "a:2\nb:1\n"


def test_this_host_matches_its_fqdn_entry():
    from launcher.launch import is_this_host

    assert is_this_host("job-launcher.job.default.svc", "job-launcher")
    assert is_this_host("JOB-LAUNCHER-0-0.job.", "job-launcher-0-0")
    assert not is_this_host("job-worker-0.job", "job-launcher")


def test_hosts_without_a_count_take_their_own_gpus():
    hosts = parse_hostfile("w0\nw1 slots=2\nw2:3\nw3 max_slots=9\nw4\n", "hf", default_slots=1)
    assert [h.slots_given for h in hosts] == [False, True, True, False, False]
    got = slots_from_gpus(hosts, {"w0": 8, "w1": 8, "w2": 8, "w3": 4, "w4": 0})
    assert [(h.name, h.slots) for h in got] == [("w0", 8), ("w1", 2), ("w2", 3), ("w3", 4), ("w4", 1)]
    assert slots_from_gpus(hosts, {}) == hosts  # no probe: the default stands
