"""The job's hosts seen as one network: each host's probe (over the ssh mesh, on the
connection that proved the host ready),
then what every rank can share: the lowest common tier, an interface and HCA list only when
every host names the same ones, the weakest GPU topology. Hosts that pull the job down or
disagree are named, so "why TCP on a RoCE cluster" has a one-line answer."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from launcher.detect.memcg import OomCounter, parse as parse_oom
from launcher.detect.probe import Probe
from launcher.envdefaults import LIBRARY_PREFIXES, CpuShare, Topology

TIER_ORDER = {"tcp": 0, "roce": 1, "ib": 2}


@dataclass(frozen=True)
class HostProbe:
    host: str
    probe: Probe | None
    topology: Topology | None
    error: str = ""
    runs_ranks: bool = True  # False: the launcher pod alone (its interface matters to mpirun, its tier does not)
    oom: OomCounter | None = None  # OOM kills in the host's memory cgroup when the job started
    env: Mapping[str, str] = field(default_factory=dict)  # library variables (NCCL_*, UCX_*...) set on the host
    env_names: frozenset[str] | None = None  # every variable set on the host (None: an older probe)


@dataclass(frozen=True)
class Plan:
    """What the env defaults are computed from, for every rank alike."""

    tier: str
    iface: str | None
    hcas: tuple[str, ...]
    topology: Topology
    notes: tuple[str, ...]
    host_env: Mapping[str, str] = field(default_factory=dict)  # set on the hosts themselves: counts as the user's
    cpus: CpuShare | None = None  # the host whose ranks get the fewest CPUs each


def from_json(host: str, doc: dict) -> HostProbe:
    p = doc["probe"]
    probe = Probe(p["tier"], tuple(p["hcas"]), p["iface"], p["memlock"], p["shm_bytes"], p["gpus"], tuple(p["notes"]),
                  tuple(p["ports"]), p.get("cpus"), p.get("cpus_why", ""), p.get("cores", 0), p.get("machine", ""))
    g = doc["gpus"]
    oom = doc.get("oom")  # absent from an older mpirt's probe, as is env
    return HostProbe(host, probe, Topology(gpus=g["count"], p2p_ok=g["p2p_ok"], mig=g["mig"],
                                           shm_bytes=probe.shm_bytes or 1 << 40),
                     oom=OomCounter(str(oom["path"]), int(oom["kills"])) if oom else None,
                     env={str(k): str(v) for k, v in doc.get("env", {}).items()},
                     env_names=frozenset(map(str, doc["env_names"])) if "env_names" in doc else None)


def _names(hosts: list[str], limit: int = 4) -> str:
    return ", ".join(hosts[:limit]) + (f" and {len(hosts) - limit} more" if len(hosts) > limit else "")


def crowded(probes: list[HostProbe], ranks: Mapping[str, int]) -> CpuShare | None:
    """The machine whose ranks (``ranks``: per host name) get the fewest CPUs each, by the
    probes. Hosts on one machine (the same kernel boot id: pods packed on one node, or the
    tests' network namespaces) share its cores: their CPUs add up to at most its cores."""
    machines: dict[str, list[HostProbe]] = {}
    for p in probes:
        if p.probe and p.probe.cpus and ranks.get(p.host, 0) > 0:
            machines.setdefault(p.probe.machine or f"host {p.host}", []).append(p)
    shares = []
    for hosts in machines.values():
        own = sum(h.probe.cpus for h in hosts)
        cores = max(h.probe.cores for h in hosts) or own  # an older probe counts no cores
        if len(hosts) == 1:
            name, why = hosts[0].host, hosts[0].probe.cpus_why
        else:
            name = f"{_names([h.host for h in hosts])} (one machine)"
            why = f"{len(hosts)} hosts on one machine of {cores} cores, by their kernel's boot id"
        shares.append(CpuShare(name, min(own, cores), sum(ranks[h.host] for h in hosts), why))
    return min(shares, key=lambda c: (c.cpus / c.ranks, -c.ranks), default=None)


def combine(probes: list[HostProbe], placed: Mapping[str, int] | None = None) -> Plan:
    """One plan for all hosts (pure); ``placed``: how many ranks each host runs, where known."""
    ranks = [p for p in probes if p.runs_ranks]
    notes = [f"{p.host}: no probe ({p.error}); counted as tcp" for p in ranks if p.probe is None]
    tiers = {p.host: p.probe.tier if p.probe else "tcp" for p in ranks} or {"": "tcp"}
    tier = min(tiers.values(), key=TIER_ORDER.__getitem__)
    if len(set(tiers.values())) > 1:
        low = [h for h, t in tiers.items() if t == tier]
        others = sorted({t for t in tiers.values() if t != tier}, key=TIER_ORDER.__getitem__)
        notes.append(f"tier {tier} because {_names(low)} {'has' if len(low) == 1 else 'have'} no better; "
                     f"the other hosts have {', '.join(others)}")
    seen = [p for p in probes if p.probe]
    ifaces = {p.probe.iface for p in seen}
    # a host we could not ask may name its interfaces otherwise: then nothing is imposed
    known = len(seen) == len(probes)
    iface = next(iter(ifaces)) if len(ifaces) == 1 and known else None
    if len(ifaces) > 1:  # one value goes to every rank: there is none to choose
        notes.append("interfaces differ (" + _names([f"{p.host}: {p.probe.iface}" for p in seen]) +
                     "): interface variables left to the libraries")
    hca_sets = {p.probe.hcas for p in seen if p.runs_ranks and p.probe.tier == tier}
    hcas = next(iter(hca_sets)) if len(hca_sets) == 1 and tier != "tcp" and known else ()
    if tier != "tcp" and len(hca_sets) > 1:
        notes.append("HCA names differ between hosts: NCCL_IB_HCA left to NCCL")
    tops = [p.topology for p in ranks if p.topology]
    topology = Topology(gpus=min((t.gpus for t in tops), default=0), p2p_ok=all(t.p2p_ok for t in tops),
                        mig=any(t.mig for t in tops), shm_bytes=min((t.shm_bytes for t in tops), default=1 << 40))
    host_env: dict[str, str] = {}
    for p in ranks:  # a worker's own NCCL_DEBUG reaches its ranks (`mpirt worker`): no default may replace it
        for name, value in p.env.items():
            host_env.setdefault(name, value)
    cpus = crowded(probes, placed) if placed else None
    if cpus and cpus.ranks > cpus.cpus:
        notes.append(f"{cpus.host} runs {cpus.ranks} ranks on {cpus.cpus} CPUs ({cpus.why}): they take turns; give "
                     "it more CPUs or run fewer ranks there")
    return Plan(tier, iface, hcas, topology, tuple(notes), host_env, cpus)


def local(host: str, root: Path = Path("/"), peer: str | None = None, runs_ranks: bool = True,
          env: Mapping[str, str] | None = None) -> HostProbe:
    """This host's probe and GPU topology (NVML; none is a normal answer), with the library
    variables ``env`` (this host's environment, as its ranks will see it) sets."""
    from launcher.detect import memcg
    from launcher.detect.gpu import local as gpu_local
    from launcher.detect.probe import probe

    oom = memcg.read(root)
    own = {k: v for k, v in (env or {}).items() if k.startswith(LIBRARY_PREFIXES)}
    names = frozenset(env) if env is not None else None
    try:
        found = probe(root, peer)
    except ValueError as e:
        return HostProbe(host, None, None, str(e), runs_ranks, oom, own, names)
    g = gpu_local()
    return HostProbe(host, found, Topology(gpus=len(g.gpus), p2p_ok=g.p2p_ok, mig=g.mig,
                                           shm_bytes=found.shm_bytes or 1 << 40), runs_ranks=runs_ranks, oom=oom,
                     env=own, env_names=names)


def to_json(hp: HostProbe) -> dict:
    """What `mpirt probe` prints; from_json reads it back on the launcher."""
    t = hp.topology
    return {"probe": hp.probe.to_json(), "gpus": {"count": t.gpus, "p2p_ok": t.p2p_ok, "mig": t.mig},
            "oom": {"path": hp.oom.path, "kills": hp.oom.kills} if hp.oom else None, "env": dict(hp.env),
            **({"env_names": sorted(hp.env_names)} if hp.env_names is not None else {})}


def probe_command(peer: str | None) -> str:
    """What each host runs on the connection that proved it ready: the probe its `mpirt worker`
    saved at start (no Python started on the critical path) and its OOM counter as it is now,
    else a fresh `mpirt probe`."""
    fresh = "mpirt probe" + (f" --peer {ipaddress.IPv4Address(peer)}" if peer else "")
    return (f'if [ -r "$MPIRT_PROBE" ]; then cat "$MPIRT_PROBE"; '
            'if [ -r "$MPIRT_OOM_FILE" ]; then echo; cat "$MPIRT_OOM_FILE"; fi; '
            f'else exec {fresh}; fi')


def from_output(host: str, output: str) -> HostProbe:
    """A host's probe from what ``probe_command`` printed there: one JSON document, then
    perhaps the counter file read just now (the probe's count dates from the worker's start)."""
    if not output.strip():
        return HostProbe(host, None, None, "no probe output (mpirt missing there, or too old for `mpirt probe`)")
    text = output.lstrip()
    try:
        doc, end = json.JSONDecoder().raw_decode(text)
        found = from_json(host, doc)
    except (ValueError, KeyError, TypeError) as e:
        return HostProbe(host, None, None, f"unreadable probe: {e}")
    now = parse_oom(text[end:])
    if found.oom and now is not None:
        found = replace(found, oom=OomCounter(found.oom.path, now))
    return found


# Read by mpirun and its daemons themselves (Open MPI passes its own MCA variables on), or set
# by a login: never a variable a rank misses.
_MPI_OWN = ("OMPI_", "PRTE_", "PMIX_", "OPAL_", "ORTE_", "HYDRA_", "I_MPI_", "MPIR_", "MPICH_")


def launcher_only(env: Mapping[str, str], sent: set[str], probes: list[HostProbe], login: frozenset[str]) -> list[str]:
    """Variables set here that no rank will see: not sent (``sent``), and set on none of the
    hosts that run ranks. Empty when a host's probe does not list its variables (older mpirt)."""
    hosts = [p for p in probes if p.runs_ranks]
    if not hosts or any(p.env_names is None for p in hosts):
        return []
    anywhere = frozenset().union(*(p.env_names for p in hosts))
    return sorted(n for n in env if n not in sent and n not in anywhere and n not in login
                  and not n.startswith(("SSH_", "BASH_FUNC_", *_MPI_OWN)))


def summary(plan: Plan, probes: list[HostProbe], profile: str | None, set_count: int,
            left_to_hosts: tuple[str, ...] = ()) -> str:
    """The launch's one line, then a line per note; ``left_to_hosts``: defaults not set because
    hosts set those names themselves, named with the hosts."""
    hosts = sum(p.runs_ranks for p in probes)
    where = f"{hosts} host{'s' if hosts != 1 else ''}"
    line = (f"mpirt: tier {plan.tier} ({where}), interface {plan.iface or 'left to the libraries'}, "
            f"profile {profile or 'none'}, {set_count} variable{'s' if set_count != 1 else ''} set "
            "(mpirt env --explain says why)")
    notes = list(plan.notes)
    if left_to_hosts:
        notes.append("set on the hosts, so not by mpirt: " + "; ".join(
            f"{n} ({_names([p.host for p in probes if p.runs_ranks and n in p.env])})" for n in sorted(left_to_hosts)))
    return "\n".join([line] + [f"mpirt:   {n}" for n in notes])
