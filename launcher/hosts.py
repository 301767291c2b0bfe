"""Hosts and slots from every place a cluster puts them, as one list of ``Host``.

Forms: hostfile lines ``host slots=N`` (Open MPI) and ``host:N`` (MPICH/Intel Hydra) or a
bare ``host``; comma-separated lists (Volcano ``VC_<TASK>_HOSTS``, ``MPI_HOST``, ``-H``);
newline lists (``/etc/volcano/<task>.host``). Every rejected entry names where it came from
(file and line, or variable) and the fix. Names are passed to ssh and mpirun, so only valid
DNS names (or IPv4 addresses) get through: no whitespace, no shell metacharacters, no
leading ``-`` that a program would read as an option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Mapping

_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_OMPI_LINE = re.compile(r"^(?P<host>\S+)(?:\s+(?P<opts>.*))?$")
_SLOTS_OPT = re.compile(r"^(?:slots|max_slots|max-slots)=(\S*)$")

# Where operators put a default slot count (first one set wins).
SLOTS_ENV = ("OMPI_MCA_orte_set_default_slots", "PRTE_MCA_prte_set_default_slots", "I_MPI_PERHOST")


class HostError(ValueError):
    """A host entry that cannot be used; the message names its origin and the fix."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    origin: str  # "path:line" or the variable it came from
    slots_given: bool = True  # False: the entry had no count and got the default


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a usable host name, or None."""
    if not name:
        return "empty host name"
    if name.startswith("-"):
        return f"host name {name!r} starts with '-' (it would be read as an option)"
    if len(name) > 253:
        return f"host name {name[:40]!r}... is longer than 253 characters"
    bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c in ".-"))})
    if bad:
        return f"host name {name!r} contains {''.join(bad)!r}; only letters, digits, '-' and '.' are allowed"
    labels = name.rstrip(".").split(".")
    for label in labels:
        if not _LABEL.match(label):
            return (f"host name {name!r} has an invalid label {label!r} (1-63 letters, digits or '-', "
                    "not starting or ending with '-')")
    return None


def _slots(raw: str, origin: str, host: str, example: str) -> int:
    """A slot count as written; ``example`` shows a good one in the form the entry used."""
    if not raw.isdigit():
        raise HostError(f"{origin}: slots for {host!r} is {raw!r}, not a whole number; write e.g. {example}")
    n = int(raw)
    if n <= 0:
        raise HostError(f"{origin}: {host!r} has {n} slots; give at least 1 (or remove the line)")
    return n


def _checked(name: str, origin: str) -> str:
    problem = name_problem(name)
    if problem:
        raise HostError(f"{origin}: {problem}; fix the entry to a valid DNS name or IPv4 address")
    return name


def parse_entry(entry: str, origin: str, default_slots: int) -> Host:
    """One host in any of the forms: ``h``, ``h:N``, ``h slots=N [max_slots=M]``."""
    entry = entry.strip()
    m = _OMPI_LINE.match(entry)
    if not m:
        raise HostError(f"{origin}: empty host entry; remove it")
    host, opts = m.group("host"), m.group("opts")
    if opts:
        slots = None
        for token in opts.split():
            om = _SLOTS_OPT.match(token)
            if not om:
                raise HostError(f"{origin}: cannot read {token!r} after {host!r}; the forms are "
                                "'host', 'host slots=N' and 'host:N'")
            if token.startswith("slots="):
                slots = _slots(om.group(1), origin, host, f"{host} slots=4")
            else:
                _slots(om.group(1), origin, host, f"{host} {token.split('=')[0]}=4")
        if host.count(":") > 1:
            raise HostError(f"{origin}: {host!r} looks like an IPv6 address; use a host name or IPv4 address")
        if ":" in host:
            raise HostError(f"{origin}: {entry!r} mixes 'host:N' and 'slots='; use one of them")
        return Host(_checked(host, origin), slots or default_slots, origin, slots is not None)
    if host.count(":") == 1:
        name, raw = host.split(":")
        return Host(_checked(name, origin), _slots(raw, origin, name, f"{name}:4"), origin)
    if ":" in host:
        raise HostError(f"{origin}: {host!r} looks like an IPv6 address; use a host name or IPv4 address")
    return Host(_checked(host, origin), default_slots, origin, False)


def _no_duplicates(hosts: list[Host]) -> list[Host]:
    seen: dict[str, Host] = {}
    for h in hosts:
        key = h.name.lower().rstrip(".")
        if key in seen:
            raise HostError(f"{h.origin}: {h.name!r} is listed again (first at {seen[key].origin}); "
                            "list each host once with its total slots")
        seen[key] = h
    return hosts


def parse_hostfile(text: str, path: str, default_slots: int = 1) -> list[Host]:
    """A hostfile in either dialect; ``#`` comments and blank lines are ignored."""
    hosts = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            hosts.append(parse_entry(line, f"{path}:{number}", default_slots))
    if not hosts:
        raise HostError(f"{path}: no hosts in the file; list one host per line ('host slots=N' or 'host:N')")
    return _no_duplicates(hosts)


def parse_list(value: str, origin: str, default_slots: int = 1) -> list[Host]:
    """A comma-separated list (Volcano env, MPI_HOST, -H): ``h1,h2:4``."""
    parts = [p for p in value.split(",")]
    if not any(p.strip() for p in parts):
        raise HostError(f"{origin} is empty; it must list the hosts, comma-separated")
    hosts = [parse_entry(p, f"{origin}[{i}]", default_slots) for i, p in enumerate(parts) if p.strip()]
    return _no_duplicates(hosts)


def default_slots(option: str | None, env: Mapping[str, str], gpu_count: Callable[[], int]) -> tuple[int, str]:
    """Slots for entries that do not say: ``--slots N``; else (``auto``, the default) the
    operator's variable, then the GPUs on this machine, then 1. Returns (slots, why)."""
    if option not in (None, "", "auto"):
        if not str(option).isdigit() or int(option) < 1:
            raise HostError(f"--slots {option!r}: give a whole number >= 1, or 'auto'")
        return int(option), "--slots"
    for name in SLOTS_ENV:
        raw = env.get(name, "")
        if raw:
            return _slots(raw, name, "every host", f"{name}=4"), name
    gpus = gpu_count()
    if gpus > 0:
        return gpus, f"{gpus} GPU(s) on this machine"
    return 1, "default"


def slots_from_gpus(hosts: list[Host], gpus: Mapping[str, int]) -> list[Host]:
    """Each host that gave no slot count gets one slot per GPU it has (``gpus``: from its own
    probe), where it has any: the launcher's GPUs say nothing of a worker's (a CPU launcher
    pod, or one whose NVIDIA_VISIBLE_DEVICES is blank, mpi-operator #476)."""
    return [Host(h.name, gpus[h.name], h.origin, False) if not h.slots_given and gpus.get(h.name, 0) > 0 else h
            for h in hosts]


def placement(hosts: list[Host], np: int) -> dict[str, int]:
    """Ranks on each host as every MPI here places them by default (by slot: the first host's
    slots filled first), for ``np`` at most the slots there are."""
    placed, left = {}, np
    for h in hosts:
        placed[h.name] = min(h.slots, left)
        left -= placed[h.name]
    return placed


def render(hosts: list[Host], dialect: str) -> str:
    """The hostfile text for an MPI: ``slots=`` for Open MPI, ``host:N`` for Hydra."""
    if dialect == "openmpi":
        return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)
    if dialect in ("mpich", "intel"):
        return "".join(f"{h.name}:{h.slots}\n" for h in hosts)
    raise ValueError(f"unknown hostfile dialect {dialect!r}")
