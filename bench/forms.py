#!/usr/bin/env python3
"""What a hostile token-endpoint body costs the proxy, against a flat body of the same size.

    cargo build --release --bin refresh-proxy
    python3 bench/forms.py                 # 3 rounds of 3,000 requests per body
    python3 bench/forms.py --rounds 5 --requests 3000

Starts target/release/refresh-proxy (memory:// store, one worker, an upstream that is never
reached: every body here is refused by the proxy itself once parsed) and sends each body,
64 KiB (server.max_body_bytes) or just under, over one keep-alive connection. The cost of a body is the
proxy process's CPU time (utime + stime from /proc) per request; the client's own time is not
counted. Rounds interleave the bodies; each line is the median over rounds, and the ratio is
that median over the flat body's median of the same run. Target: every hostile body costs at
most 3x the flat one. Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64 * 1024
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


KEY = "forms-bench-refresh-token-key-0123456789"
# Every body ends by repeating `grant_type`, so the proxy reads and parses all of it, then
# refuses it (400, RFC 6749 §3.2) without a store or upstream call: what is measured is the
# cost of reading and parsing, the work done before anything is authenticated.
TAIL = "&grant_type=again"


def fill(prefix: str, unit: str) -> bytes:
    """`prefix`, then `unit` repeated, then TAIL: SIZE bytes or just under."""
    room = SIZE - len(prefix) - len(TAIL)
    return (prefix + unit * (room // len(unit)) + TAIL).encode()


def bodies() -> dict[str, bytes]:
    grant = "grant_type=refresh_token&refresh_token="
    long_name = "n" * 1000
    return {
        # One long value: the cheapest body of this size.
        "flat (one 64 KiB value)": fill(grant, "a"),
        # The original finding: 18,447 distinct names in 64 KiB (now cut at the 65th).
        "18,447 distinct names": ("&".join(f"p{i}" for i in range(18447)) + "&").encode()[:SIZE],
        # At the cap: 64 parameters, 62 of them with 1,000-byte names sharing a prefix, past
        # the linear scan into the hash set.
        "64 long names, shared prefix": (grant + "x&" + "&".join(
            f"{long_name}{i:03}=v" for i in range(62)) + TAIL).encode(),
        # Every byte percent-encoded: decoding work on all of it.
        "all percent-encoded": fill(grant, "%41"),
        # Every byte a '+' (decoded to a space).
        "all '+'": fill(grant, "+"),
        # Empty pairs: 65,000 '&' between two parameters.
        "stray ampersands": fill(grant + "x", "&"),
    }


def config(port: int, admin: int) -> str:
    return f"""
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin}"
workers = 1
drain_delay = 0
shutdown_timeout = 2
[upstream]
url = "http://127.0.0.1:9"
discovery = false
token_path = "/token"
revocation = "absent"
[store]
url = "memory://"
[tokens]
refresh_token_key = "{KEY}"
[clients.bench]
secret = "bench-secret"
[log]
level = "error"
"""


def send_all(port: int, body: bytes, count: int) -> dict[int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Authorization": "Basic YmVuY2g6YmVuY2gtc2VjcmV0",  # bench:bench-secret
    }
    statuses: dict[int, int] = {}
    for _ in range(count):
        conn.request("POST", "/token", body=body, headers=headers)
        res = conn.getresponse()
        res.read()
        statuses[res.status] = statuses.get(res.status, 0) + 1
        if res.getheader("connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.close()
    return statuses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--bin", default=os.environ.get(
        "PROXY_BIN", str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "refresh-proxy")))
    args = parser.parse_args()

    port, admin = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="forms-bench-"))
    conf = tmp / "proxy.toml"
    conf.write_text(config(port, admin))
    proc = subprocess.Popen([args.bin, "--config", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp / "proxy.log", "wb"))
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print(f"the proxy did not start; see {tmp / 'proxy.log'}", file=sys.stderr)
                    return 1
                time.sleep(0.05)
        cases = bodies()
        per_request: dict[str, list[float]] = {name: [] for name in cases}
        statuses: dict[str, dict[int, int]] = {}
        send_all(port, cases["flat (one 64 KiB value)"], 200)  # warm-up
        for _ in range(args.rounds):
            for name, body in cases.items():
                before = cpu_s(proc.pid)
                statuses[name] = send_all(port, body, args.requests)
                per_request[name].append((cpu_s(proc.pid) - before) / args.requests * 1e6)
        flat = statistics.median(per_request["flat (one 64 KiB value)"])
        print(f"{'body (64 KiB or just under)':32} {'bytes':>6} {'proxy CPU/request':>18} "
              f"{'min..max':>14} {'vs flat':>8}  answers")
        worst = 0.0
        for name, body in cases.items():
            runs = per_request[name]
            med = statistics.median(runs)
            ratio = med / flat if flat else float("inf")
            if name != "flat (one 64 KiB value)":
                worst = max(worst, ratio)
            answers = ", ".join(f"{n}x{s}" for s, n in sorted(statuses[name].items()))
            print(f"{name:32} {len(body):6} {med:15.1f} us {min(runs):6.1f}..{max(runs):6.1f} "
                  f"{ratio:7.2f}x  {answers}")
        verdict = "met" if worst <= 3 else "MISSED"
        print(f"\nworst hostile body: {worst:.2f}x the flat one (target <= 3x): {verdict}")
        return 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
