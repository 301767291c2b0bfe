"""Where this process sits in the cgroup tree, for one controller, from the text of
``/proc/self/cgroup`` (memcg reads its memory counters there, cpus its CPU quota)."""

from __future__ import annotations


def locate(proc_cgroup: str, controller: str) -> tuple[str | None, str] | None:
    """(the v1 hierarchy's controller list, path) where a v1 hierarchy has ``controller``: it
    wins on a hybrid host; else (None, path) for v2; None when neither line is there."""
    v1 = v2 = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        ident, controllers, path = parts
        if ident == "0" and controllers == "":
            v2 = (None, path)
        elif controller in controllers.split(","):
            v1 = (controllers, path)
    return v1 or v2
