"""The bootstrap interface: the one whose route reaches the other hosts (longest prefix; the
default route when no peer address is known), never lo, docker*, virbr* or veth*. Reads the
kernel routing table text (``/proc/net/route``), so tests pass their own."""

from __future__ import annotations

import ipaddress
import struct

EXCLUDED = ("lo", "docker", "virbr", "veth")


def _addr(hex_le: str) -> int:
    """The kernel prints a network-order address as a little-endian hex word."""
    return struct.unpack("<I", bytes.fromhex(hex_le))[0]


def routes(text: str) -> list[tuple[str, int, int]]:
    """(interface, destination, mask) of every route, addresses as integers (a.b.c.d = a<<24 | ...)."""
    out = []
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) >= 8:
            out.append((f[0], _addr(f[1]), _addr(f[7])))
    return out


def bootstrap_interface(route_text: str, peer: str | None = None) -> str | None:
    """The interface to reach ``peer`` (an IPv4 address), or the default route's."""
    target = int(ipaddress.IPv4Address(peer)) if peer else 0
    best = None
    for iface, dest, mask in routes(route_text):
        if iface.startswith(EXCLUDED) or (target & mask) != dest:
            continue
        if peer is None and mask != 0:
            continue
        if best is None or bin(mask).count("1") > bin(best[1]).count("1"):
            best = (iface, mask)
    return best[0] if best else None
