#!/usr/bin/env python3
"""CPU per forwarded GET: refresh-proxy, nginx proxy_pass, and the least a tokio forwarder costs.

    python3 bench/forward_bound.py                  # 3 rounds of 5 s per forwarder, about 2 minutes
    python3 bench/forward_bound.py --rounds 5 --duration 8

Builds `refresh-proxy` and `bench/bare_forward.rs` in release mode, starts the nginx backend,
nginx proxy_pass, one refresh-proxy (ES256 JWT, Redis) and `bare_forward` (2 worker threads)
as bench/harness.py does, then runs `wrk -t2 -c64` GET /resource through each in turn, round
after round, and prints each one's CPU µs per request (`/proc/<pid>/stat` utime + stime of the
process and its children) and requests per second: medians over the rounds, and each round's
ratio to nginx. `bare_forward` is not a forwarder anyone should run (its header says what it
leaves out); it says how much of the proxy's cost per forwarded request is the runtime and the
kernel, and how much is the HTTP machinery above them (bench/README.md, "How far below nginx
a forwarder on tokio can go").

Standard library only; every process is stopped by its own pid (harness.Processes).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import harness as h


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=5, help="seconds of each wrk run (default 5)")
    p.add_argument("--connections", type=int, default=64)
    a = p.parse_args()
    subprocess.run(["cargo", "build", "--release", "--bin", "refresh-proxy", "--example", "bare_forward"],
                   cwd=h.ROOT, check=True)
    bare_bin = h.RELEASE / "examples" / "bare_forward"
    args = argparse.Namespace(duration=a.duration, warmup=1, connections=a.connections)
    procs = h.Processes()
    tmp = Path(tempfile.mkdtemp(prefix="forward-bound."))
    runs: dict[str, list[tuple[float, float]]] = {}
    try:
        redis = h.Redis(procs, tmp, "redis")
        _, backend_port = h.start_backend(procs, tmp)
        front, front_port = h.start_front(procs, tmp, backend_port)
        proxy = h.Proxy(procs, tmp, "proxy", redis.url, "rp:", "ES256", "jwt", f"http://127.0.0.1:{backend_port}")
        bare_port = h.free_port()
        bare = procs.start("bare_forward", [str(bare_bin), f"127.0.0.1:{bare_port}",
                                            f"127.0.0.1:{backend_port}", "2"], tmp / "bare.log")
        h.wait_until(lambda: h.http_status(bare_port, "/") == 200, 10, "bare_forward")
        targets = {
            "refresh-proxy": (proxy.proc.pid, proxy.port),
            "nginx proxy_pass": (front.proc.pid, front_port),
            "bare_forward": (bare.pid, bare_port),
        }
        for r in range(a.rounds):
            for name, (pid, port) in targets.items():
                meter = h.CpuMeter()
                meter.add("proxy", pid)
                out, cpu = meter.around(lambda: h.wrk(args, f"http://127.0.0.1:{port}/resource"))
                us = cpu["proxy"] * 1e6 / out["requests_total"]
                runs.setdefault(name, []).append((us, out["ok_per_s"]))
                h.log(f"round {r + 1}/{a.rounds} {name}: {us:.1f} µs CPU a request, {out['ok_per_s']:,.0f} req/s")
    finally:
        procs.stop_all()
    nginx = [us for us, _ in runs["nginx proxy_pass"]]
    print(f"\n{'forwarder':20s} {'CPU µs/request':>15s} {'req/s':>10s} {'CPU / nginx':>12s} {'per round':>12s}")
    for name, values in runs.items():
        cpu = statistics.median(us for us, _ in values)
        rps = statistics.median(r for _, r in values)
        per_round = [us / n for (us, _), n in zip(values, nginx)]
        print(f"{name:20s} {cpu:15.1f} {rps:10,.0f} {cpu / statistics.median(nginx):12.2f} "
              f"{min(per_round):5.2f}–{max(per_round):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
