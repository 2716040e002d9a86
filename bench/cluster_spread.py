#!/usr/bin/env python3
"""The per-request costs of docs/capacity.md, and its check on a 3-master Redis Cluster.

    python3 bench/cluster_spread.py                 # both parts, about 1.5 minutes
    python3 bench/cluster_spread.py --no-single --json out.json --spread-chains 20480

`bash bench/run.sh` runs the cluster part as one of its lines (bench/harness.py calls
`cluster_spread` below); run alone, this script also measures the single-node costs.

Single node: one redis-server with one replica, one refresh-proxy (ES256 JWT, then opaque
access tokens), `refresh-proxy issue` families, refresh-bench in closed loop (64 chains);
then, over the run, per refresh: the proxy's CPU (`/proc/<pid>/stat` utime + stime) and the
bytes it wrote (`/proc/<pid>/io` wchar; socket reads are not counted in rchar), Redis's CPU
(`INFO cpu` used_cpu_sys + used_cpu_user), its time inside the script (`INFO commandstats`),
its network bytes in and out (`INFO stats`), the commands it counted, the replication stream
(`master_repl_offset`) and the replica's CPU, and the master's `used_memory` growth.

Cluster: three `redis-server --cluster-enabled yes` joined with
`redis-cli --cluster create … --cluster-replicas 0 --cluster-yes` (5461/5462/5461 slots), the
same proxy on `redis+cluster://`, `--spread-families` families issued, `--spread-chains` of
them refreshed (one refresh-bench chain each, `--spread-batch` at a time in open loop at
`--spread-rate`), then per master: EVALSHA/EVAL calls, family keys
(`DBSIZE` minus the index sets it holds), `used_memory` growth, CPU and client connections.
The plan predicts each master's share from the slots it owns (docs/capacity.md); the line
passes when every master's redemptions and family keys are within `--tolerance` of that
prediction.

Standard library only; every process is stopped by its own pid (harness.Processes).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import shutil
import statistics
import time
from pathlib import Path

import harness as h

SLOTS = 16384
PREFIX = "rp:"
SUBJECT = "bench-spread"


def info(port: int, *command: str) -> dict[str, str]:
    """The `key:value` lines of `INFO <section>` or `CLUSTER INFO` as a dict."""
    out = {}
    for line in h.run(["redis-cli", "-p", str(port), *command]).stdout.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            out[key] = value
    return out


def redis_counters(port: int) -> dict[str, float]:
    """What one Redis server has done so far: CPU seconds, EVALSHA/EVAL calls and their usec,
    network bytes, keys, used_memory, connected clients."""
    cpu = info(port, "INFO", "cpu")
    stats = info(port, "INFO", "stats")
    cmd = info(port, "INFO", "commandstats")
    mem = info(port, "INFO", "memory")
    clients = info(port, "INFO", "clients")

    def calls(name: str) -> tuple[int, int]:
        v = cmd.get(f"cmdstat_{name}")
        if not v:
            return 0, 0
        kv = dict(x.split("=") for x in v.split(","))
        return int(kv["calls"]), int(kv["usec"])

    evalsha, evalsha_usec = calls("evalsha")
    eval_, eval_usec = calls("eval")
    return {
        "cpu_s": float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
        "evalsha": evalsha, "evalsha_usec": evalsha_usec, "eval": eval_, "eval_usec": eval_usec,
        "net_in": int(stats["total_net_input_bytes"]), "net_out": int(stats["total_net_output_bytes"]),
        "commands": int(stats["total_commands_processed"]),
        "keys": int(h.run(["redis-cli", "-p", str(port), "DBSIZE"]).stdout.strip()),
        "used_memory": int(mem["used_memory"]),
        "clients": int(clients["connected_clients"]),
    }


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def proc_counters(pid: int) -> dict[str, float]:
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return {"cpu_s": h._process_cpu_s(pid), "rchar": int(io["rchar"]), "wchar": int(io["wchar"])}


def drive(args, proxy: h.Proxy, tokens: Path, connections: int, duration: float | None = None,
          warmup: float | None = None, rate: float | None = None) -> dict:
    """One refresh-bench run, closed loop or at `rate` (no --save-tokens: the tokens are used
    once)."""
    duration = args.duration if duration is None else duration
    warmup = args.warmup if warmup is None else warmup
    argv = [str(h.BENCH_BIN), "--url", proxy.token_url, "--connections", str(connections),
            "--duration", str(duration), "--warmup", str(warmup), "--json",
            "--tokens", str(tokens), "--client-id", h.CLIENT_ID, "--client-secret", h.CLIENT_SECRET]
    if rate:
        argv += ["--rate", f"{rate:.0f}"]
    res = h.subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 120)
    if res.returncode != 0 or not res.stdout.strip():
        raise RuntimeError(f"refresh-bench failed ({res.returncode}): {res.stderr[-2000:]}")
    out = json.loads(res.stdout)
    bad = sum(out["non_200"].values()) + sum(out["transport_errors"].values())
    if bad:
        h.log(f"  refresh-bench: {bad} failed requests: {out['non_200']} {out['transport_errors']}")
    return out


def measured_run(args, proxy: h.Proxy, ports: list[int], tokens: Path, connections: int,
                 chains: int | None = None) -> dict:
    """Counters of the proxy and every Redis around refresh-bench (warm-up included: the
    counters cannot tell it apart, so every per-refresh figure divides by the scripts Redis
    ran). With `chains`, the file's first `chains` tokens are driven `connections` at a time,
    one short open-loop run per slice at `--spread-rate`: in open loop every chain sends the
    same number of requests whatever its master's latency (in closed loop a slower master's
    chains would send fewer), and slices keep the requests in flight within what the store's
    timeouts allow on this machine."""
    r0 = {p: redis_counters(p) for p in ports}
    p0 = proc_counters(proxy.proc.pid)
    t0 = time.monotonic()
    if chains is None:
        bench = drive(args, proxy, tokens, connections)
    else:
        lines = tokens.read_text().split()[:chains]
        runs = []
        for i in range(0, len(lines), connections):
            part = tokens.with_suffix(f".{i}.txt")
            part.write_text("\n".join(lines[i:i + connections]) + "\n")
            runs.append(drive(args, proxy, part, connections, duration=args.slice_duration, warmup=0.2,
                              rate=args.spread_rate))
        bench = {"ok_per_s": round(statistics.median(r["ok_per_s"] for r in runs)),
                 "latency_us": {"p99_median": statistics.median(r["latency_us"]["p99"] for r in runs)},
                 "non_200": {k: sum(r["non_200"].get(k, 0) for r in runs) for r in runs for k in r["non_200"]},
                 "transport_errors": {k: sum(r["transport_errors"].get(k, 0) for r in runs)
                                      for r in runs for k in r["transport_errors"]},
                 "runs": len(runs)}
    wall = time.monotonic() - t0
    p1 = proc_counters(proxy.proc.pid)
    r1 = {p: redis_counters(p) for p in ports}
    return {"bench": bench, "wall_s": wall, "proxy": delta(p1, p0),
            "redis": {p: delta(r1[p], r0[p]) for p in ports}, "redis_after": r1,
            "client_mem": {p: client_memory(p) for p in ports}}


def per_refresh(run: dict) -> dict:
    """The single-node (or whole-cluster) per-refresh figures of a measured run."""
    redis = {k: sum(r[k] for r in run["redis"].values()) for k in next(iter(run["redis"].values()))}
    scripts = redis["evalsha"] + redis["eval"]
    if not scripts:
        raise RuntimeError("no EVALSHA reached Redis")
    us = 1e6 / scripts
    return {
        "redemptions": scripts,
        "rate_per_s": round(scripts / run["wall_s"]),
        "redis_commands_per_refresh": round(redis["commands"] / scripts, 3),
        "proxy_cpu_us": round(run["proxy"]["cpu_s"] * us, 1),
        "redis_cpu_us": round(redis["cpu_s"] * us, 1),
        "redis_script_us": round((redis["evalsha_usec"] + redis["eval_usec"]) / scripts, 1),
        "redis_net_in_bytes": round(redis["net_in"] / scripts),
        "redis_net_out_bytes": round(redis["net_out"] / scripts),
        # The proxy's writes (write/writev count in /proc/<pid>/io wchar; socket reads do not
        # count in rchar): less what Redis received, the answers to the clients.
        "proxy_written_bytes": round(run["proxy"]["wchar"] / scripts),
        "client_answer_bytes": round((run["proxy"]["wchar"] - redis["net_in"]) / scripts),
    }


class ClusterNodes:
    """`masters` cluster-enabled redis-servers joined into one cluster, no replicas."""

    def __init__(self, procs: h.Processes, tmp: Path, masters: int) -> None:
        self.ports = []
        self.procs = []
        for i in range(masters):
            port, bus = h.free_port(), h.free_port()
            d = tmp / f"cluster-{i}"
            d.mkdir()
            self.procs.append(procs.start(f"redis-cluster-{i}", [
                "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(d), "--cluster-enabled", "yes",
                "--cluster-config-file", str(d / "nodes.conf"), "--cluster-port", str(bus),
                "--cluster-node-timeout", "5000"], d / "redis.log"))
            self.ports.append(port)
        for port in self.ports:
            h.wait_until(lambda: self._ping(port), 10, f"redis-server on {port}")
        h.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
               "--cluster-replicas", "0", "--cluster-yes"], timeout=60)
        h.wait_until(lambda: all(info(p, "CLUSTER", "INFO").get("cluster_state") == "ok" for p in self.ports),
                     30, "cluster_state:ok on every master")
        self.slots = self._slots()

    @staticmethod
    def _ping(port: int) -> bool:
        try:
            return h.run(["redis-cli", "-p", str(port), "PING"], timeout=5).stdout.strip() == "PONG"
        except RuntimeError:
            return False

    def _slots(self) -> dict[int, list[tuple[int, int]]]:
        """Each master's slot ranges, from CLUSTER NODES."""
        out: dict[int, list[tuple[int, int]]] = {p: [] for p in self.ports}
        text = h.run(["redis-cli", "-p", str(self.ports[0]), "CLUSTER", "NODES"]).stdout
        for line in text.splitlines():
            f = line.split()
            port = int(re.match(r"[^:]+:(\d+)", f[1]).group(1))
            for r in f[8:]:
                lo, _, hi = r.partition("-")
                out[port].append((int(lo), int(hi or lo)))
        return out

    def owner(self, key: str) -> int:
        slot = int(h.run(["redis-cli", "-p", str(self.ports[0]), "CLUSTER", "KEYSLOT", key]).stdout.strip())
        return next(p for p, ranges in self.slots.items() if any(lo <= slot <= hi for lo, hi in ranges))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports) + "/"


def cluster_spread(args, procs: h.Processes, tmp: Path, upstream: str) -> dict:
    """The harness line: per-master share of redemptions and family keys on a 3-master cluster
    against the share of slots each owns; `median` is the worst deviation in percent."""
    if args.connections_spread > args.families_spread:
        raise RuntimeError("--spread-chains must not exceed --spread-families (one family per chain)")
    nodes = ClusterNodes(procs, tmp, args.masters)
    base = {p: redis_counters(p) for p in nodes.ports}
    proxy = h.Proxy(procs, tmp, "proxy-cluster", nodes.url, PREFIX, "ES256", "jwt", upstream)
    # The proxy's cluster connections are made on first use; one refresh-less round of issuing
    # makes them, so the client count below is the proxy's steady state.
    tokens = tmp / "tokens-cluster.txt"
    t = time.monotonic()
    proxy.issue(args.families_spread, tokens, subject=SUBJECT)
    issue_s = time.monotonic() - t
    issued = {p: redis_counters(p) for p in nodes.ports}
    run = measured_run(args, proxy, nodes.ports, tokens, args.spread_batch, chains=args.connections_spread)
    procs.stop(proxy.proc)
    index_keys = [f"{PREFIX}idx:sub:{SUBJECT}", f"{PREFIX}idx:client-subjects:{h.CLIENT_ID}"]
    index_at = {k: nodes.owner(k) for k in index_keys}
    index_bytes = {k: int(h.run(["redis-cli", "-p", str(index_at[k]), "MEMORY", "USAGE", k, "SAMPLES", "0"])
                          .stdout.strip() or 0) for k in index_keys}

    total_scripts = sum(r["evalsha"] + r["eval"] for r in run["redis"].values())
    masters = []
    for p in nodes.ports:
        owned = sum(hi - lo + 1 for lo, hi in nodes.slots[p])
        here_idx = [k for k in index_keys if index_at[k] == p]
        fam_keys = run["redis_after"][p]["keys"] - len(here_idx)
        r = run["redis"][p]
        scripts = r["evalsha"] + r["eval"]
        grown = issued[p]["used_memory"] - base[p]["used_memory"]
        masters.append({
            "port": p, "slots": owned, "predicted_share": owned / SLOTS,
            "redemptions": scripts, "redemption_share": scripts / total_scripts if total_scripts else 0,
            "family_keys": fam_keys, "key_share": fam_keys / args.families_spread,
            "used_memory_growth": grown,
            "index_sets_here": {k: index_bytes[k] for k in here_idx},
            "family_bytes_per_family": round((grown - sum(index_bytes[k] for k in here_idx)) / max(fam_keys, 1)),
            "cpu_us_per_redemption": round(r["cpu_s"] * 1e6 / scripts, 1) if scripts else None,
            "script_us_per_redemption": round((r["evalsha_usec"] + r["eval_usec"]) / scripts, 1) if scripts else None,
            # Read while the proxy still ran; less the redis-cli that asked.
            "clients_during_run": run["redis_after"][p]["clients"] - 1,
            "client_tot_mem": run["client_mem"][p],
        })
    for m in masters:
        m["redemption_deviation_pct"] = round(100 * (m["redemption_share"] / m["predicted_share"] - 1), 2)
        m["key_deviation_pct"] = round(100 * (m["key_share"] / m["predicted_share"] - 1), 2)
    worst = max(max(abs(m["redemption_deviation_pct"]), abs(m["key_deviation_pct"])) for m in masters)
    totals = per_refresh(run)
    h.log(f"cluster: {args.masters} masters, {args.families_spread:,} families issued in {issue_s:.1f} s, "
          f"{total_scripts:,} redemptions at {totals['rate_per_s']:,}/s over {args.connections_spread} chains")
    for m in masters:
        h.log(f"  :{m['port']} {m['slots']} slots ({100 * m['predicted_share']:.2f} %): "
              f"redemptions {m['redemptions']:,} ({m['redemption_deviation_pct']:+.1f} %), "
              f"family keys {m['family_keys']:,} ({m['key_deviation_pct']:+.1f} %), "
              f"memory +{m['used_memory_growth']:,} B, {m['clients_during_run']} clients, "
              f"CPU {m['cpu_us_per_redemption']} µs/redemption")
    for proc in nodes.procs:
        procs.stop(proc)
    return {
        "label": f"cluster {args.masters} masters: worst share deviation", "unit": "%",
        "values": [worst], "median": worst, "min": worst, "max": worst,
        "families": args.families_spread, "connections": args.connections_spread, "issue_s": round(issue_s, 2),
        "tolerance_pct": args.tolerance * 100, "masters": masters, "per_refresh": totals,
        "index_sets": {k: {"master": index_at[k], "bytes": index_bytes[k]} for k in index_keys},
        "refresh_bench": run["bench"],
    }


def client_memory(port: int) -> list[int]:
    """`tot-mem` of every client connection but the asking redis-cli's."""
    text = h.run(["redis-cli", "-p", str(port), "CLIENT", "LIST"]).stdout
    return [int(m.group(1)) for line in text.splitlines() if "cmd=client|list" not in line
            for m in [re.search(r"tot-mem=(\d+)", line)] if m]


def request_bytes(proxy: h.Proxy, tokens: Path) -> int:
    """The size of the refresh request refresh-bench sends (hyper: request line, host,
    content-type, authorization, content-length, the form), for the file's first token."""
    token = tokens.read_text().split()[0]
    body = f"grant_type=refresh_token&refresh_token={h.urllib.parse.quote_plus(token, safe='-._*')}"
    basic = h.base64.b64encode(f"{h.CLIENT_ID}:{h.CLIENT_SECRET}".encode()).decode()
    head = (f"POST /token HTTP/1.1\r\nhost: 127.0.0.1:{proxy.port}\r\n"
            "content-type: application/x-www-form-urlencoded\r\n"
            f"authorization: Basic {basic}\r\ncontent-length: {len(body)}\r\n\r\n")
    return len(head) + len(body)


def single_node(args, procs: h.Processes, tmp: Path, upstream: str) -> dict:
    """Per-refresh costs on one redis-server (the plan's inputs): ES256 JWT access tokens, and
    opaque ones (whose records the script writes, so Redis memory grows with refreshes)."""
    out = {}
    for fmt in ("jwt", "opaque"):
        redis = h.Redis(procs, tmp, f"redis-single-{fmt}")
        # One replica: what a replica costs per redemption (its CPU, the replication stream).
        replica = h.Redis(procs, tmp, f"redis-replica-{fmt}")
        replica.cli("REPLICAOF", "127.0.0.1", str(redis.port))
        h.wait_until(lambda: info(replica.port, "INFO", "replication").get("master_link_status") == "up",
                     30, "the replica's link")
        proxy = h.Proxy(procs, tmp, f"proxy-single-{fmt}", redis.url, PREFIX, "ES256", fmt, upstream)
        tokens = tmp / f"tokens-single-{fmt}.txt"
        proxy.issue(4 * 64, tokens, subject=SUBJECT)
        before = redis.used_memory()
        offset0 = int(info(redis.port, "INFO", "replication")["master_repl_offset"])
        replica_cpu0 = redis_counters(replica.port)["cpu_s"]
        run = measured_run(args, proxy, [redis.port], tokens, 64)
        o = per_refresh(run)
        o["replication_bytes_per_refresh"] = round(
            (int(info(redis.port, "INFO", "replication")["master_repl_offset"]) - offset0) / o["redemptions"])
        o["replica_cpu_us"] = round((redis_counters(replica.port)["cpu_s"] - replica_cpu0) * 1e6 / o["redemptions"], 1)
        o["client_request_bytes"] = request_bytes(proxy, tokens)
        o["connections"] = 64
        o["redis_clients_during_run"] = run["redis_after"][redis.port]["clients"] - 1
        o["redis_client_tot_mem"] = client_memory(redis.port)
        o["proxy_workers"] = h.os.cpu_count()
        o["used_memory_growth_per_refresh"] = round(
            (run["redis_after"][redis.port]["used_memory"] - before) / o["redemptions"], 1)
        o["non_200"] = run["bench"]["non_200"]
        procs.stop(proxy.proc)
        procs.stop(replica.proc)
        procs.stop(redis.proc)
        h.log(f"single node, {fmt}: " + ", ".join(f"{k} {v}" for k, v in o.items()))
        out[fmt] = o
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--masters", type=int, default=3, help="cluster masters (default 3)")
    p.add_argument("--spread-families", dest="families_spread", type=int, metavar="N", default=30_000,
                   help="families issued on the cluster (default 30,000)")
    p.add_argument("--spread-chains", dest="connections_spread", type=int, metavar="N", default=10_240,
                   help="families refreshed on the cluster, one refresh-bench chain each (default 10,240)")
    p.add_argument("--spread-batch", dest="spread_batch", type=int, default=512,
                   help="chains driven at once on the cluster (default 512)")
    p.add_argument("--spread-rate", dest="spread_rate", type=float, default=2000,
                   help="refreshes per second of each batch, open loop (default 2,000)")
    p.add_argument("--spread-slice-duration", dest="slice_duration", type=float, default=1.0,
                   help="seconds each batch of chains runs (default 1)")
    p.add_argument("--tolerance", type=float, default=0.10,
                   help="largest deviation of a master's share from its slots' share (default 0.10)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.add_argument("--duration", type=float, default=4.0, help="seconds measured per run (default 4)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per run")
    p.add_argument("--no-single", action="store_true", help="the cluster part only")
    p.add_argument("--json", type=Path, help="write every number here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args()
    for path in (h.PROXY_BIN, h.BENCH_BIN):
        if not path.exists():
            print(f"{path} is missing: cargo build --release --bins", file=sys.stderr)
            return 2
    h.signal.signal(h.signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="refresh-capacity."))
    h.os.chmod(tmp, 0o755)
    procs = h.Processes()
    result = {"machine": h.machine_info(), "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        backend, backend_port = h.start_backend(procs, tmp)
        upstream = f"http://127.0.0.1:{backend_port}"
        if not args.no_single:
            result["single_node"] = single_node(args, procs, tmp, upstream)
        result["cluster"] = cluster_spread(args, procs, tmp, upstream)
    finally:
        procs.stop_all()
        if args.keep:
            h.log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    c = result["cluster"]
    verdict = "PASS" if c["median"] <= c["tolerance_pct"] else "MISS"
    print(f"cluster spread, {args.masters} masters: worst deviation {c['median']:.1f} % "
          f"(target ≤ {c['tolerance_pct']:g} %)  {verdict}")
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
