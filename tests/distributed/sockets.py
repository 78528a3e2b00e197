"""The inet sockets a process holds, read from /proc (Linux): which addresses its MPI traffic could use."""

from __future__ import annotations

import os
import socket
import struct


def _address(hex_addr: str, v6: bool) -> str:
    """'0100007F:1F90' -> '127.0.0.1' (the kernel prints addresses as host-order 32-bit words)."""
    ip = hex_addr.split(":")[0]
    words = [struct.pack("<I", int(ip[i : i + 8], 16)) for i in range(0, len(ip), 8)]
    return socket.inet_ntop(socket.AF_INET6 if v6 else socket.AF_INET, b"".join(words))


def inet_sockets(pid: int | str = "self") -> list[dict[str, str]]:
    """Every TCP/UDP socket (IPv4 and IPv6) that process `pid` holds open: protocol, local and remote
    address, and the kernel's state code (0A listen, 01 established)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/{pid}/net/{proto}", encoding="ascii") as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            cols = row.split()
            if cols[9] in inodes:
                v6 = proto.endswith("6")
                found.append(
                    {
                        "proto": proto,
                        "local": _address(cols[1], v6),
                        "remote": _address(cols[2], v6),
                        "state": cols[3],
                    }
                )
    return found


def off_loopback(sockets: list[dict[str, str]]) -> list[dict[str, str]]:
    """The sockets bound to or connected to anything but loopback (an unconnected remote is 0.0.0.0)."""
    loop = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
    unset = {"0.0.0.0", "::"}
    return [s for s in sockets if s["local"] not in loop or (s["remote"] not in loop | unset)]
