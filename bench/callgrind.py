#!/usr/bin/env python3
"""Instructions and allocator calls per request of one refresh-proxy binary, under callgrind.

Counts that a noisy, shared machine does not move (bench/README.md, "Reproducing a profile"):

    python3 bench/callgrind.py target/release/refresh-proxy                  # ES256 + Redis refreshes
    python3 bench/callgrind.py target/release/refresh-proxy --mode forward   # GETs forwarded upstream
    python3 bench/callgrind.py BIN --workers none    # a binary older than server.workers

Starts redis-server and an nginx backend as bench/harness.py does, the proxy under
`valgrind --tool=callgrind` (1 worker by default), warms up for 2 s with refresh-bench (16
connections), zeroes the counters, runs refresh-bench for --seconds, dumps, and prints
instructions per request and calls per request of every allocator entry point (glibc's
malloc/realloc/calloc, mimalloc's mi_*, jemalloc's _rjem_*). aws-lc's own C allocations
always go to glibc's malloc.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h  # noqa: E402

ALLOCATOR_CALLS = re.compile(r"^(malloc|calloc|realloc|free|mi_(malloc|zalloc|realloc)\w*|mi_free|_rjem_(malloc|mallocx|calloc|realloc|rallocx|sdallocx|free))$")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bin", help="the refresh-proxy binary")
    p.add_argument("--mode", choices=["refresh", "forward"], default="refresh")
    p.add_argument("--seconds", type=float, default=5, help="measured seconds (default 5)")
    p.add_argument("--workers", default="1", help="server.workers, or 'none' to leave it unset")
    p.add_argument("--valgrind-args", default="", help="more callgrind options, e.g. "
                   "'--separate-callers12=mi_malloc_aligned' to see allocation sites")
    a = p.parse_args()
    binary = Path(a.bin).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="callgrind."))
    wrapper = tmp / "wrap.sh"
    # The proxy itself under callgrind; its `issue` subcommand (also run through PROXY_BIN) not.
    wrapper.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = "--config" ]; then exec valgrind --tool=callgrind --dump-instr=no '
        f'--callgrind-out-file={tmp}/cg.out.%p {a.valgrind_args} {binary} "$@"; fi\n'
        f'exec {binary} "$@"\n')
    os.chmod(wrapper, 0o755)
    h.PROXY_BIN = wrapper
    if a.workers != "none":
        os.environ["REFRESH_PROXY_SERVER__WORKERS"] = a.workers
    slow_wait = h.wait_until
    h.wait_until = lambda cond, timeout, what: slow_wait(cond, max(timeout, 120), what)
    procs = h.Processes()
    try:
        redis = h.Redis(procs, tmp, "redis")
        _, backend_port = h.start_backend(procs, tmp)
        proxy = h.Proxy(procs, tmp, "proxy", redis.url, "rp:", "ES256", "jwt", f"http://127.0.0.1:{backend_port}")
        tokens = tmp / "tokens.txt"
        proxy.issue(64, tokens)
        argv = [str(h.BENCH_BIN), "--connections", "16", "--json", "--warmup", "0"]
        if a.mode == "forward":
            argv += ["--url", f"http://127.0.0.1:{proxy.port}/resource", "--get"]
        else:
            argv += ["--url", proxy.token_url, "--tokens", str(tokens), "--save-tokens", str(tokens),
                     "--client-id", h.CLIENT_ID, "--client-secret", h.CLIENT_SECRET]
        subprocess.run(argv + ["--duration", "2"], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "--zero", str(proxy.proc.pid)], capture_output=True, check=True)
        out = subprocess.run(argv + ["--duration", str(a.seconds)], capture_output=True, text=True, check=True)
        subprocess.run(["callgrind_control", "--dump=window", str(proxy.proc.pid)], capture_output=True, check=True)
        time.sleep(1)
        n = json.loads(out.stdout)["answered"]
        dump = max(glob.glob(f"{tmp}/cg.out.*"), key=os.path.getmtime)
        text = Path(dump).read_text(errors="replace")
        total = int(re.search(r"^summary: (\d+)", text, re.M).group(1))
        print(f"{a.mode}: {n} requests, {total / n:,.0f} instructions per request ({dump})")
        names: dict[str, str] = {}
        calls: dict[str, int] = {}
        callee = None
        for line in text.splitlines():
            if line.startswith("cfn="):
                m = re.match(r"^cfn=\((\d+)\)(?: (.*))?$", line)
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                callee = names.get(m.group(1))
            elif line.startswith("fn="):
                m = re.match(r"^fn=\((\d+)\)(?: (.*))?$", line)
                if m and m.group(2):
                    names[m.group(1)] = m.group(2)
            elif line.startswith("calls=") and callee:
                calls[callee] = calls.get(callee, 0) + int(line[6:].split()[0])
        for name in sorted(calls):
            if ALLOCATOR_CALLS.match(name.split("'")[0]) and "'" not in name:
                print(f"  {name:24s} {calls[name] / n:8.2f} per request")
    finally:
        procs.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
