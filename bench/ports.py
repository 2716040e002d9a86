"""Ports for the servers the benchmark scripts start, chosen before the server binds them.

A port the kernel hands out for a bind to port 0 and which is then released lies in the
ephemeral range, which every outgoing connection takes its local port from: with wrk and
refresh-bench opening connections by the hundred, one of them can take it before the server
binds it ("Address already in use"). So ports come from below the ephemeral range (from 20000
up to the start of `ip_local_port_range`), and each is reserved for this process by a UDP
socket bound to the same number, kept until the process exits: another script of the same kind
cannot be given it, while the server's TCP listener can still bind it. The test rig does the
same (tests/it/support/ports.rs).
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

FIRST = 20_000
_HELD: list[socket.socket] = []


def _end() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def free_port() -> int:
    """A port nothing listens on, below the ephemeral range, reserved for this process."""
    end = _end()
    if end <= FIRST + 1:
        raise RuntimeError(f"no ports between {FIRST} and the ephemeral range ({end})")
    start = random.Random(os.getpid() * 7919 + len(_HELD)).randrange(FIRST, end)
    for i in range(end - FIRST):
        port = FIRST + (start - FIRST + i) % (end - FIRST)
        reservation = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            reservation.bind(("127.0.0.1", port))
        except OSError:
            reservation.close()
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                reservation.close()
                continue
        _HELD.append(reservation)
        return port
    raise RuntimeError(f"no free port between {FIRST} and {end}")
