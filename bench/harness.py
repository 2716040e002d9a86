#!/usr/bin/env python3
"""The benchmark harness of refresh-proxy (issue #6). Run it through `bash bench/run.sh`.

Starts everything it measures on free loopback ports in a temporary directory (redis-server,
two nginx instances: a static backend and a proxy_pass front, the real IdP from tests/idp, and
four refresh-proxy instances in release mode), runs every measurement of a round in a fixed
order, repeats the rounds (so each pair runs interleaved, A B A B ...), and prints a table of
medians, same-run ratios and targets, plus bench/results/<time>.json (and latest.json).

Only the Python standard library is used. Every process started here is stopped by its own pid
at the end (also on Ctrl-C). bench/README.md explains each line.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import html.parser
import http.client
import http.cookiejar
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

# bench/cluster_spread.py uses this module's helpers as `harness`: one copy of it, not two.
sys.modules.setdefault("harness", sys.modules[__name__])
import cluster_spread  # noqa: E402
from ports import free_port  # noqa: E402,F401  (also cluster_spread's, as h.free_port)

ROOT = Path(__file__).resolve().parent.parent
# Where `cargo build --release` put the binaries (run.sh builds with the caller's
# CARGO_TARGET_DIR, relative to the repository root when relative).
RELEASE = ROOT / os.environ.get("CARGO_TARGET_DIR", "target") / "release"
PROXY_BIN = RELEASE / "refresh-proxy"
BENCH_BIN = RELEASE / "refresh-bench"
RESULTS = ROOT / "bench" / "results"
# Where the next refresh-bench run writes its `--report` page (set around each measurement by
# `measure_everything`; None: no report).
REPORT_TO: Path | None = None

CLIENT_ID = "bench"
CLIENT_SECRET = "bench-client-secret"
# The bench only opens families (`refresh-proxy issue`, which sends admin.issue_token); it
# never revokes, so admin.token is not set.
ISSUE_TOKEN = "bench-issue-token-0123456789"
REFRESH_TOKEN_KEY = "bench-refresh-token-key-0123456789abcdef"
IDP_CLIENT_ID = "www"
IDP_CLIENT_SECRET = "Secr3t!"
IDP_REDIRECT_URI = "http://127.0.0.1/callback"
# The static backend's answer: a small JSON body, as an IdP's small answers are.
BACKEND_BODY = '{"ok":true,"service":"static backend","padding":"0123456789abcdef0123456789abcdef"}'
# redis-benchmark baseline: hashes pre-populated for keys rb:{000000000000}:f ... (-r this many).
EVALSHA_KEYSPACE = 100_000


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)




def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    """GET http://127.0.0.1:<port><path>; the status, or None when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


class Processes:
    """Every child started by the harness; stopped by pid, newest first."""

    def __init__(self) -> None:
        self.children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], logfile: Path, **kw) -> subprocess.Popen:
        out = open(logfile, "ab")
        kw.setdefault("stdout", out)
        kw.setdefault("stderr", out)
        kw.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(argv, **kw)
        self.children.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children = [(n, p) for (n, p) in self.children if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self.children)):
            self.stop(proc)


def run(argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        )
    return res


# --------------------------------------------------------------------------------------------
# CPU accounting: where each run's CPU time went (the machine is shared, so this also says how
# much went to processes outside the benchmark).

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int, kernel_only: bool = False) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    if kernel_only:
        return int(fields[12]) / CLK_TCK  # stime: the kernel's work for the process
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads


def _tree(pid: int) -> list[int]:
    """pid and its descendants (nginx's workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children") if Path(f"/proc/{p}").exists() else []:
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _machine_busy_s() -> float:
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in first[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU seconds of named groups of processes (and their children) over one run, of the load
    generator (the harness's waited-for children), and of the whole machine."""

    def __init__(self) -> None:
        self.groups: dict[str, list[int]] = {}

    def add(self, group: str, pid: int) -> None:
        self.groups.setdefault(group, []).append(pid)

    def _sample(self) -> dict[str, float]:
        snap = {g: sum(_process_cpu_s(p) for root in roots for p in _tree(root))
                for g, roots in self.groups.items()}
        # The proxies' kernel time alone: the socket work part of the CPU floor (issue 18).
        snap["proxy_kernel"] = sum(_process_cpu_s(p, True) for p in self.groups.get("proxy", []))
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        snap["generator"] = ru.ru_utime + ru.ru_stime
        snap["machine"] = _machine_busy_s()
        snap["wall"] = time.monotonic()
        return snap

    def around(self, fn):
        before = self._sample()
        out = fn()
        after = self._sample()
        cpu = {k: round(after[k] - before[k], 3) for k in after}
        cpu["outside"] = round(cpu["machine"] - sum(v for k, v in cpu.items()
                                                    if k not in ("machine", "wall", "proxy_kernel")), 3)
        cpu["cores_busy"] = round(cpu["machine"] / cpu["wall"], 2) if cpu["wall"] else 0.0
        return out, cpu


# --------------------------------------------------------------------------------------------
# Services


class Redis:
    def __init__(self, procs: Processes, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.dir = tmp / name
        self.dir.mkdir()
        self.proc = procs.start(
            name,
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--protected-mode", "yes"],
            self.dir / "redis.log",
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.cli("PING").strip() == "PONG":
                    break
            except RuntimeError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} did not start (see {self.dir}/redis.log)")
            time.sleep(0.05)

    def cli(self, *args: str) -> str:
        return run(["redis-cli", "-p", str(self.port), *args]).stdout

    def used_memory(self) -> int:
        m = re.search(r"^used_memory:(\d+)", self.cli("INFO", "memory"), re.M)
        assert m, "INFO memory has used_memory"
        return int(m.group(1))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


NGINX_COMMON = """
pid {dir}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
  access_log off;
  client_body_temp_path {dir}/client_body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
{body}
}}
"""


class Nginx:
    """An nginx master in the foreground with a generated config."""

    def __init__(self, procs: Processes, tmp: Path, name: str, workers: int, http_body: str) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        os.chmod(self.dir, 0o755)
        conf = f"worker_processes {workers};\n" + NGINX_COMMON.format(dir=self.dir, body=http_body)
        (self.dir / "nginx.conf").write_text(conf)
        err = self.dir / "error.log"
        run(["nginx", "-t", "-q", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(err)])
        self.proc = procs.start(
            name,
            ["nginx", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-e", str(err),
             "-g", "daemon off;"],
            self.dir / "stdout.log",
        )


def start_backend(procs: Processes, tmp: Path) -> tuple[Nginx, int]:
    port = free_port()
    body = f"""
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      default_type application/json;
      return 200 '{BACKEND_BODY}';
    }}
  }}"""
    nginx = Nginx(procs, tmp, "nginx-backend", 1, body)
    wait_until(lambda: http_status(port, "/") == 200, 10, f"the nginx backend on {port}")
    return nginx, port


def start_front(procs: Processes, tmp: Path, backend_port: int) -> tuple[Nginx, int]:
    port = free_port()
    body = f"""
  upstream backend {{
    server 127.0.0.1:{backend_port};
    keepalive 256;
    keepalive_requests 1000000;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}"""
    # One worker per core, as the proxy's runtime has one thread per core.
    nginx = Nginx(procs, tmp, "nginx-front", os.cpu_count() or 2, body)
    wait_until(lambda: http_status(port, "/") == 200, 10, f"nginx proxy_pass on {port}")
    return nginx, port


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} is not up after {timeout}s")
        time.sleep(0.02)


class Proxy:
    """A refresh-proxy in release mode with a bench config."""

    def __init__(self, procs: Processes, tmp: Path, name: str, store_url: str, prefix: str,
                 alg: str, fmt: str, upstream: str, server_timing: bool = False) -> None:
        self.name = name
        self.port = free_port()
        self.admin_port = free_port()
        self.config = tmp / f"{name}.toml"
        self.config.write_text(proxy_config(self.port, self.admin_port, store_url, prefix, alg, fmt, upstream,
                                            server_timing))
        self.log = tmp / f"{name}.log"
        self.proc = procs.start(name, [str(PROXY_BIN), "--config", str(self.config)], self.log)
        wait_until(lambda: self.proc.poll() is not None or http_status(self.admin_port, "/readyz") == 200,
                   20, f"refresh-proxy {name}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"refresh-proxy {name} exited; see {self.log}")

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def issue(self, count: int, out: Path | str, subject: str = "bench") -> None:
        run([str(PROXY_BIN), "issue", "--config", str(self.config), "--client", CLIENT_ID,
             "--subject", subject, "--scope", "read", "--count", str(count), "--out", str(out)],
            timeout=900)

    def memory_kib(self) -> dict[str, int]:
        """VmHWM (peak RSS) and VmRSS of the process, in KiB."""
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0])
        return out


def proxy_config(port: int, admin_port: int, store_url: str, prefix: str, alg: str, fmt: str,
                 upstream: str, server_timing: bool = False) -> str:
    return f"""# generated by bench/harness.py
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
# Answers say where their time went (Server-Timing): on for the open-loop refresh line only.
server_timing = {"true" if server_timing else "false"}
# Nothing routes traffic here: stop at once on SIGTERM.
drain_delay = 0
shutdown_timeout = 5

[upstream]
url = "{upstream}"
discovery = false
token_path = "/token"
# The nginx backend has no revocation endpoint (the bench never revokes).
revocation = "absent"

[store]
url = "{store_url}"
key_prefix = "{prefix}"

[tokens]
refresh_token_key = "{REFRESH_TOKEN_KEY}"
signing_alg = "{alg}"

[clients.{CLIENT_ID}]
secret = "{CLIENT_SECRET}"
access_token_format = "{fmt}"
reuse_grace_period = 30
# A load-test client: /admin/issue may open its families.
allow_admin_issue = true

[admin]
issue_token = "{ISSUE_TOKEN}"

[log]
level = "warn"
"""


class Idp:
    """The real IdP (oidc-provider) of tests/idp, rotating refresh tokens, JWT access tokens."""

    def __init__(self, procs: Processes, tmp: Path) -> None:
        env = dict(os.environ, PORT="0", ROTATE_REFRESH_TOKENS="always", JWT_ACCESS_TOKENS="1",
                   EXIT_ON_STDIN_EOF="1")
        self.log = tmp / "idp.log"
        self.proc = procs.start("idp", ["node", str(ROOT / "tests/idp/server.js")], self.log,
                                stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=env)
        line = self.proc.stdout.readline().decode()
        try:
            self.port = json.loads(line)["listening"]
        except (ValueError, KeyError) as e:
            raise RuntimeError(f"the IdP did not start ({line!r}); see {self.log}") from e
        self.base = f"http://127.0.0.1:{self.port}"

    @property
    def token_url(self) -> str:
        return f"{self.base}/token"

    def refresh_token(self, login: str) -> str:
        """The authorization code flow with PKCE, through the IdP's development login and consent
        pages, as tests/support/idp.rs `code_flow` does; returns the refresh token."""
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar), _NoRedirect())
        verifier = _b64url(secrets.token_bytes(32))
        challenge = _b64url(hashlib.sha256(verifier.encode()).digest())
        state = _b64url(secrets.token_bytes(12))
        query = urllib.parse.urlencode({
            "client_id": IDP_CLIENT_ID, "response_type": "code", "redirect_uri": IDP_REDIRECT_URI,
            "scope": "openid offline_access read", "state": state, "prompt": "consent",
            "nonce": _b64url(secrets.token_bytes(12)),
            "code_challenge": challenge, "code_challenge_method": "S256",
        })
        url, data = f"{self.base}/auth?{query}", None
        code = None
        for _ in range(12):
            status, headers, body = _fetch(opener, url, data)
            if 300 <= status < 400:
                nxt = urllib.parse.urljoin(url, headers["Location"])
                if nxt.startswith(IDP_REDIRECT_URI):
                    params = urllib.parse.parse_qs(urllib.parse.urlsplit(nxt).query)
                    if "code" not in params:
                        raise RuntimeError(f"code flow: redirected without a code: {nxt}")
                    code = params["code"][0]
                    break
                url, data = nxt, None
                continue
            if status != 200:
                raise RuntimeError(f"code flow: HTTP {status} from {url}: {body[:500]!r}")
            form = _FormParser()
            form.feed(body.decode("utf-8", "replace"))
            if form.action is None:
                raise RuntimeError(f"code flow: no form at {url}")
            fields = []
            for name, kind, value in form.inputs:
                if name == "login":
                    value = login
                elif kind == "password":
                    value = "any-password"
                fields.append((name, value or ""))
            url = urllib.parse.urljoin(url, form.action)
            data = urllib.parse.urlencode(fields).encode()
        if code is None:
            raise RuntimeError("code flow: no authorization code")
        answer = _token_request(self.token_url, {
            "grant_type": "authorization_code", "code": code, "redirect_uri": IDP_REDIRECT_URI,
            "code_verifier": verifier,
        })
        return answer["refresh_token"]


def _b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: D102 - follow no redirect
        return None


def _fetch(opener, url: str, data: bytes | None):
    req = urllib.request.Request(url, data=data)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class _FormParser(html.parser.HTMLParser):
    """The first <form> of a page and its named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: list[tuple[str, str, str | None]] = []
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and not self._done and self.action is None:
            self.action = a.get("action") or ""
            self._in_form = True
        elif tag == "input" and self._in_form and a.get("name"):
            self.inputs.append((a["name"], (a.get("type") or "text").lower(), a.get("value")))

    def handle_endtag(self, tag):
        if tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


def _token_request(url: str, form: dict[str, str]) -> dict:
    auth = base64.b64encode(
        f"{urllib.parse.quote_plus(IDP_CLIENT_ID)}:{urllib.parse.quote_plus(IDP_CLIENT_SECRET)}".encode()
    ).decode()
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), headers={
        "Authorization": f"Basic {auth}", "Content-Type": "application/x-www-form-urlencoded"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"POST {url}: HTTP {e.code}: {e.read()[:500]!r}") from e


# --------------------------------------------------------------------------------------------
# Load generators


def refresh_bench(args: argparse.Namespace, url: str, *, tokens: Path | None = None,
                  client: tuple[str, str] | None = None, rate: float | None = None,
                  connections: int | None = None) -> dict:
    argv = [str(BENCH_BIN), "--url", url, "--connections", str(connections or args.connections),
            "--duration", str(args.duration), "--warmup", str(args.warmup), "--json"]
    if tokens is None:
        argv.append("--get")
    else:
        argv += ["--tokens", str(tokens), "--save-tokens", str(tokens)]
    if client:
        argv += ["--client-id", client[0], "--client-secret", client[1]]
    if rate:
        argv += ["--rate", f"{rate:.0f}"]
    if REPORT_TO is not None:
        argv += ["--report", str(REPORT_TO)]
    res = subprocess.run(argv, capture_output=True, text=True,
                         timeout=args.duration + args.warmup + 120)
    if res.returncode not in (0, 1) or not res.stdout.strip():
        raise RuntimeError(f"refresh-bench failed ({res.returncode}): {res.stderr[-2000:]}")
    out = json.loads(res.stdout)
    # For CPU per request: the warm-up ran at about the same rate as the measured window.
    out["requests_total"] = out["answered"] * (args.duration + args.warmup) / args.duration
    bad = sum(out["non_200"].values()) + sum(out["transport_errors"].values())
    if bad:
        log(f"  {url}: {bad} failed requests: {out['non_200']} {out['transport_errors']}")
    return out


_WRK_UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0}


def wrk(args: argparse.Namespace, url: str) -> dict:
    threads = str(min(os.cpu_count() or 2, args.connections))
    res = run(["wrk", "-t", threads, "-c", str(args.connections), "-d", f"{args.duration:g}s",
               "--latency", url], timeout=args.duration + 60)
    text = res.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", text, re.M):
        lat[f"p{pct}"] = float(value) * _WRK_UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: (.*)", text)
    if errors or sock:
        log(f"  wrk {url}: {errors.group(0) if errors else ''} {sock.group(0) if sock else ''}")
    total = re.search(r"(\d+) requests in", text)
    return {"ok_per_s": rps, "latency_us": lat, "requests_total": int(total.group(1)) if total else None,
            "raw": text}


class EvalshaBaseline:
    """redis-benchmark EVALSHA of bench/rotate.lua over pre-populated family hashes."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self.sha = redis.cli("SCRIPT", "LOAD", (ROOT / "bench/rotate.lua").read_text()).strip()
        now_ms = int(time.time() * 1000)
        far = now_ms + 365 * 86400 * 1000
        populate = f"""
for i = ARGV[1], ARGV[2] do
  local k = string.format('rb:{{%012d}}:f', i)
  redis.call('HSET', k, 'c', 'bench', 's', 'bench', 'g', 'read', 'sc', 'read', 'n', '0',
    'f', 'jwt', 'a', '{{"aud":"bench"}}', 'd', '', 't', '{now_ms // 1000}', 'r', '{now_ms}',
    'i', '{far}', 'e', '{far}', 'v', '0123456789abcdef01234567')
  redis.call('PEXPIREAT', k, '{far}')
end
return 1
"""
        step = 20_000
        for lo in range(0, EVALSHA_KEYSPACE, step):
            redis.cli("EVAL", populate, "0", str(lo), str(min(lo + step, EVALSHA_KEYSPACE) - 1))
        self.requests = 20_000

    def measure(self, args: argparse.Namespace) -> dict:
        now_ms = str(int(time.time() * 1000))
        argv = ["redis-benchmark", "-p", str(self.redis.port), "-P", "1", "-c", "50",
                "-n", str(self.requests), "-r", str(EVALSHA_KEYSPACE), "--csv",
                "EVALSHA", self.sha, "2", "rb:{__rand_int__}:f", "rb:{__rand_int__}:at:-",
                CLIENT_ID, now_ms, str(30 * 86400 * 1000), "30000",
                "0123456789ab", "fedcba987654"]
        res = run(argv, timeout=args.duration * 10 + 60)
        rows = [r for r in res.stdout.splitlines() if r.startswith('"EVALSHA')]
        if not rows:
            raise RuntimeError(f"redis-benchmark printed no result: {res.stdout} {res.stderr}")
        cols = [c.strip('"') for c in rows[-1].split('","')]
        rps = float(cols[1])
        # Size the next run to last about --duration seconds.
        self.requests = max(10_000, int(rps * args.duration))
        out = {"ok_per_s": rps, "latency_us": {}, "requests_total": int(argv[argv.index("-n") + 1])}
        if len(cols) >= 7:
            out["latency_us"] = {"p50": float(cols[4]) * 1000, "p99": float(cols[6]) * 1000}
        return out

    def check(self) -> None:
        """One call by hand: the script must rotate."""
        # --no-raw: the answer is one MessagePack bulk string, printed escaped.
        reply = self.redis.cli("--no-raw", "EVALSHA", self.sha, "2", "rb:{000000000001}:f",
                               "rb:{000000000001}:at:-", CLIENT_ID, str(int(time.time() * 1000)),
                               "2592000000", "30000", "0123456789ab", "fedcba987654")
        if "rotated" not in reply:
            raise RuntimeError(f"bench/rotate.lua did not rotate: {reply!r}")


# --------------------------------------------------------------------------------------------
# The run


CPU_GROUPS = ("proxy", "redis", "nginx", "backend", "idp", "generator", "outside")


def ecdsa_sign_us(seconds: int = 1) -> float:
    """Microseconds per ECDSA P-256 signature on one core: `openssl speed -mr ecdsap256`."""
    out = run(["openssl", "speed", "-seconds", str(seconds), "-mr", "ecdsap256"], timeout=60).stdout
    for line in out.splitlines():
        # +F4:<index>:<bits>:<signatures/s>:<verifications/s>
        if line.startswith("+F4:"):
            return 1e6 / float(line.split(":")[3])
    raise RuntimeError(f"openssl speed gave no ECDSA line: {out[-500:]}")


def cpu_per_request(runs: list[dict]) -> dict[str, float]:
    """Median over the rounds of each group's CPU µs per request."""
    out = {}
    for g in CPU_GROUPS:
        vals = [o["cpu_s"][g] * 1e6 / o["requests_total"] for o in runs if o.get("requests_total")]
        if vals:
            out[g] = round(statistics.median(vals), 1)
    return out


def summary(values: list[float]) -> dict:
    return {"values": [round(v, 3) for v in values], "median": round(statistics.median(values), 3),
            "min": round(min(values), 3), "max": round(max(values), 3)}


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(argv: list[str]) -> str:
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(), "loadavg_at_start": os.getloadavg(),
        "rustc": version(["rustc", "--version"]), "redis": version(["redis-server", "--version"]),
        "nginx": version(["nginx", "-v"]), "node": version(["node", "--version"]),
        "wrk": version(["wrk", "-v"]),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds of every measurement (default 3)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds measured per run (default 6)")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per refresh-bench run")
    p.add_argument("--connections", type=int, default=64, help="connections (= chains) per run")
    p.add_argument("--families", type=int, default=1_000_000,
                   help="families issued for the Redis memory line (default 1,000,000)")
    p.add_argument("--startups", type=int, default=10, help="start-ups timed for the start-up line")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run (about 1 minute): 1 round of 2 s runs, 20,000 families, 3 start-ups")
    p.add_argument("--cluster-only", action="store_true",
                   help="only the 3-master cluster line (bench/cluster_spread.py), about 1 minute")
    cluster_spread.add_arguments(p)
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.families, args.startups = 1, 2.0, 0.5, 20_000, 3
    for path in (PROXY_BIN, BENCH_BIN):
        if not path.exists():
            print(f"{path} is missing: run `cargo build --release` (bash bench/run.sh does)", file=sys.stderr)
            return 2

    # SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C, so every child is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="refresh-bench."))
    os.chmod(tmp, 0o755)
    procs = Processes()
    started = time.time()
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        results = (measure_cluster_only if args.cluster_only else measure_everything)(args, tmp, procs)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    results["run"]["wall_s"] = round(time.time() - started, 1)
    results["run"]["finished_utc"] = stamp
    reports = results.pop("reports")

    table = render(results)
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = json.dumps(results, indent=2)
    (RESULTS / f"{stamp}.json").write_text(doc + "\n")
    (RESULTS / "latest.json").write_text(doc + "\n")
    (RESULTS / "latest.txt").write_text(table + "\n")
    page = combined_html(f"refresh-proxy benchmark {stamp}", table, reports, results["measurements"])
    (RESULTS / f"{stamp}.html").write_text(page)
    (RESULTS / "latest.html").write_text(page)
    log(f"wrote {RESULTS / (stamp + '.json')}, .html and latest.json / .txt / .html ({results['run']['wall_s']} s)")
    return 0


def measure_cluster_only(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict:
    """`--cluster-only`: the 3-master cluster line alone (bench/cluster_spread.py)."""
    machine = machine_info()
    log(f"machine: {machine['cpus']} × {machine['cpu']}, load {machine['loadavg_at_start']}")
    _, backend_port = start_backend(procs, tmp)
    measurements = {"cluster_spread": cluster_spread.cluster_spread(
        args, procs, tmp, f"http://127.0.0.1:{backend_port}")}
    return {
        "run": {"rounds": 1, "duration_s": args.duration, "warmup_s": args.warmup,
                "connections": args.connections_spread, "machine": machine},
        "measurements": measurements, "targets": evaluate(measurements), "raw": {}, "reports": {},
    }


def measure_everything(args: argparse.Namespace, tmp: Path, procs: Processes) -> dict:
    machine = machine_info()
    log(f"machine: {machine['cpus']} × {machine['cpu']}, load {machine['loadavg_at_start']}")
    log(f"temporary directory {tmp}")

    meter = CpuMeter()
    redis = Redis(procs, tmp, "redis")
    backend, backend_port = start_backend(procs, tmp)
    front, front_port = start_front(procs, tmp, backend_port)
    meter.add("redis", redis.proc.pid)
    meter.add("nginx", front.proc.pid)
    meter.add("backend", backend.proc.pid)
    backend_url = f"http://127.0.0.1:{backend_port}"
    log(f"redis :{redis.port}, nginx backend :{backend_port}, nginx proxy_pass :{front_port}")

    variants = {
        "es256_redis": ("ES256", "jwt", redis.url, "rp:es:", False),
        "eddsa_redis": ("EdDSA", "jwt", redis.url, "rp:ed:", False),
        "opaque_redis": ("ES256", "opaque", redis.url, "rp:op:", False),
        "es256_memory": ("ES256", "jwt", "memory://", "rp:", False),
        # The ES256 proxy again, with server.server_timing: the open-loop refresh line, whose
        # answers then say where each request's time went in the proxy.
        "es256_redis_timed": ("ES256", "jwt", redis.url, "rp:et:", True),
    }
    proxies: dict[str, Proxy] = {}
    tokens: dict[str, Path] = {}
    for name, (alg, fmt, store, prefix, timed) in variants.items():
        proxies[name] = Proxy(procs, tmp, f"proxy-{name.replace('_', '-')}", store, prefix, alg, fmt, backend_url,
                              server_timing=timed)
        tokens[name] = tmp / f"tokens-{name}.txt"
        # One chain per connection, as many again as spares.
        proxies[name].issue(2 * args.connections, tokens[name])
        meter.add("proxy", proxies[name].proc.pid)
    es = proxies["es256_redis"]
    log(f"proxies: " + ", ".join(f"{n} :{p.port}" for n, p in proxies.items()))

    idp = Idp(procs, tmp)
    meter.add("idp", idp.proc.pid)
    t = time.monotonic()
    idp_tokens = tmp / "tokens-idp.txt"
    idp_tokens.write_text("\n".join(idp.refresh_token(f"bench-{i}") for i in range(args.connections + 16)) + "\n")
    log(f"IdP :{idp.port}: {args.connections + 16} refresh tokens by the code flow in {time.monotonic() - t:.1f} s")

    evalsha = EvalshaBaseline(redis)
    evalsha.check()

    client = (CLIENT_ID, CLIENT_SECRET)
    closed = {
        "evalsha": ("redis-benchmark EVALSHA rotate.lua, -P 1 -c 50", "req/s",
                    lambda: evalsha.measure(args)),
        "refresh_es256_redis": ("refresh ES256 JWT, Redis", "req/s",
                                lambda: refresh_bench(args, es.token_url, tokens=tokens["es256_redis"], client=client)),
        "nginx_get": ("nginx proxy_pass GET (refresh-bench)", "req/s",
                      lambda: refresh_bench(args, f"http://127.0.0.1:{front_port}/resource")),
        "refresh_eddsa_redis": ("refresh EdDSA JWT, Redis", "req/s",
                                lambda: refresh_bench(args, proxies["eddsa_redis"].token_url,
                                                      tokens=tokens["eddsa_redis"], client=client)),
        "refresh_opaque_redis": ("refresh opaque, Redis", "req/s",
                                 lambda: refresh_bench(args, proxies["opaque_redis"].token_url,
                                                       tokens=tokens["opaque_redis"], client=client)),
        "refresh_es256_memory": ("refresh ES256 JWT, memory://", "req/s",
                                 lambda: refresh_bench(args, proxies["es256_memory"].token_url,
                                                       tokens=tokens["es256_memory"], client=client)),
        "idp_refresh": ("IdP refresh (oidc-provider, RS256 JWT)", "req/s",
                        lambda: refresh_bench(args, idp.token_url, tokens=idp_tokens,
                                              client=(IDP_CLIENT_ID, IDP_CLIENT_SECRET))),
        "fwd_proxy_wrk": ("forwarding via refresh-proxy (wrk)", "req/s",
                          lambda: wrk(args, f"http://127.0.0.1:{es.port}/resource")),
        "fwd_nginx_wrk": ("forwarding via nginx proxy_pass (wrk)", "req/s",
                          lambda: wrk(args, f"http://127.0.0.1:{front_port}/resource")),
    }
    # The last round's refresh-bench report of each line: (label, the page).
    reports: dict[str, tuple[str, str]] = {}

    def with_report(key: str, label: str, fn):
        global REPORT_TO
        REPORT_TO = tmp / f"report-{key}.html"
        REPORT_TO.unlink(missing_ok=True)
        try:
            result = fn()
        finally:
            if REPORT_TO.exists():
                reports[key] = (label, REPORT_TO.read_text())
            REPORT_TO = None
        return result

    raw: dict[str, list[dict]] = {k: [] for k in closed}
    for r in range(1, args.rounds + 1):
        for key, (label, _, fn) in closed.items():
            out, out["cpu_s"] = meter.around(lambda: with_report(key, label, fn))
            if key == "refresh_es256_redis":
                # The floor's signature, measured next to each round it is compared with: the
                # machine's speed drifts between rounds (a shared host), so one measurement at
                # the start would make the ratio drift with it.
                out["sign_us"] = ecdsa_sign_us()
                log(f"  openssl speed ecdsap256: {out['sign_us']:.1f} µs a signature (one core)")
            raw[key].append(out)
            log(f"round {r}/{args.rounds} {label}: {out['ok_per_s']:,.0f}/s")

    measurements: dict[str, dict] = {}
    for key, (label, unit, _) in closed.items():
        m = summary([o["ok_per_s"] for o in raw[key]])
        m.update(label=label, unit=unit)
        p99s = [o["latency_us"].get("p99") for o in raw[key]]
        if all(v is not None for v in p99s):
            m["p99_us"] = summary(p99s)
        m["cpu_us_per_request"] = cpu_per_request(raw[key])
        m["cores_busy"] = round(statistics.median(o["cpu_s"]["cores_busy"] for o in raw[key]), 2)
        measurements[key] = m

    # CPU against the floor (issue 18): a refresh's proxy CPU against one ES256 signature plus
    # the kernel's work for the proxy's sockets in the same run; a forwarded GET's proxy CPU
    # against nginx's.
    def per_request(key: str, group: str) -> list[float]:
        return [o["cpu_s"][group] * 1e6 / o["requests_total"] for o in raw[key]]
    measurements["cpu_refresh"] = dict(summary(per_request("refresh_es256_redis", "proxy")),
                                       label="proxy CPU per ES256 refresh (closed loop)", unit="µs")
    measurements["cpu_floor"] = dict(
        summary([o["sign_us"] + k for o, k in zip(raw["refresh_es256_redis"],
                                                   per_request("refresh_es256_redis", "proxy_kernel"))]),
        label="floor: openssl ES256 signature + proxy kernel time", unit="µs",
        sign_us=round(statistics.median(o["sign_us"] for o in raw["refresh_es256_redis"]), 1))
    measurements["cpu_fwd_proxy"] = dict(summary(per_request("fwd_proxy_wrk", "proxy")),
                                         label="proxy CPU per forwarded GET (wrk)", unit="µs")
    measurements["cpu_fwd_nginx"] = dict(summary(per_request("fwd_nginx_wrk", "nginx")),
                                         label="nginx CPU per proxied GET (wrk)", unit="µs")

    # Open loop, fixed rates: half the measured maximum of the thing under test; the baseline
    # at the same rate, interleaved.
    refresh_rate = 0.5 * measurements["refresh_es256_redis"]["median"]
    nginx_rate = 0.5 * measurements["nginx_get"]["median"]
    fwd_rate = 0.5 * measurements["fwd_proxy_wrk"]["median"]
    timed = proxies["es256_redis_timed"]
    open_runs = {
        "open_refresh": ("refresh ES256 JWT, Redis, open loop", refresh_rate,
                         lambda: refresh_bench(args, timed.token_url, tokens=tokens["es256_redis_timed"],
                                               client=client, rate=refresh_rate)),
        "open_nginx_at_refresh_rate": ("nginx proxy_pass GET, open loop", refresh_rate,
                                       lambda: refresh_bench(args, f"http://127.0.0.1:{front_port}/resource",
                                                             rate=refresh_rate)),
        # Equal load: nginx at half of its own maximum, as the refresh line is at half of its.
        "open_nginx_equal_load": ("nginx proxy_pass GET, open loop, half its max", nginx_rate,
                                  lambda: refresh_bench(args, f"http://127.0.0.1:{front_port}/resource",
                                                        rate=nginx_rate)),
        "open_fwd_direct": ("backend direct GET, open loop", fwd_rate,
                            lambda: refresh_bench(args, f"{backend_url}/resource", rate=fwd_rate)),
        "open_fwd_proxy": ("forwarding via refresh-proxy, open loop", fwd_rate,
                           lambda: refresh_bench(args, f"http://127.0.0.1:{es.port}/resource", rate=fwd_rate)),
        "open_fwd_nginx": ("forwarding via nginx proxy_pass, open loop", fwd_rate,
                           lambda: refresh_bench(args, f"http://127.0.0.1:{front_port}/resource", rate=fwd_rate)),
    }
    raw_open: dict[str, list[dict]] = {k: [] for k in open_runs}
    for r in range(1, args.rounds + 1):
        for key, (label, rate, fn) in open_runs.items():
            out, out["cpu_s"] = meter.around(
                lambda: with_report(key, f"{label} at {rate:,.0f} req/s", fn))
            raw_open[key].append(out)
            lat = out["latency_us"]
            log(f"round {r}/{args.rounds} {label} at {rate:,.0f}/s: p50 {lat['p50']} µs, p99 {lat['p99']} µs, "
                f"{out['ok_per_s']:,.0f} ok/s")
    for key, (label, rate, _) in open_runs.items():
        runs = raw_open[key]
        m = summary([o["latency_us"]["p99"] for o in runs])
        m.update(label=f"{label}: p99", unit="µs", rate=round(rate))
        m["p50_us"] = summary([o["latency_us"]["p50"] for o in runs])
        m["p999_us"] = summary([o["latency_us"]["p999"] for o in runs])
        m["service_p99_us"] = summary([o["service_latency_us"]["p99"] for o in runs])
        m["service_p999_us"] = summary([o["service_latency_us"]["p999"] for o in runs])
        m["achieved_per_s"] = summary([o["ok_per_s"] for o in runs])
        if all("phases_us" in o for o in runs):
            # Where the time went (refresh-bench's Server-Timing breakdown): per band and part,
            # the median over the rounds of each round's mean.
            m["phases_us"] = {
                band: {part: statistics.median(o["phases_us"][band][part] for o in runs)
                       for part in runs[0]["phases_us"][band]}
                for band in runs[0]["phases_us"] if all(o["phases_us"].get(band) for o in runs)
            }
        measurements[key] = m

    # Peak RSS of the proxies over everything above.
    rss = {name: p.memory_kib() for name, p in proxies.items()}
    peak_mib = max(v["VmHWM"] for v in rss.values()) / 1024
    measurements["proxy_peak_rss"] = {
        "label": f"proxy peak RSS (VmHWM, largest of the {len(rss)})", "unit": "MiB", "values": [round(peak_mib, 1)],
        "median": round(peak_mib, 1), "min": round(peak_mib, 1), "max": round(peak_mib, 1),
        "per_proxy_kib": rss,
    }

    # Stop the load's processes before the memory and start-up lines, so they run on a quieter
    # machine and their numbers are their own.
    for p in proxies.values():
        procs.stop(p.proc)
    procs.stop(idp.proc)

    measurements["redis_bytes_per_family"] = redis_per_family(args, procs, tmp, backend_url)
    measurements["startup_ms"] = startup(args, procs, tmp, backend_url)
    measurements["cluster_spread"] = cluster_spread.cluster_spread(args, procs, tmp, backend_url)

    targets = evaluate(measurements)
    return {
        "run": {"rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                "connections": args.connections, "machine": machine},
        "measurements": measurements,
        "targets": targets,
        "raw": {k: [{kk: vv for kk, vv in o.items() if kk != "raw"} for o in v]
                for k, v in {**raw, **raw_open}.items()},
        # Not written to the JSON: main() turns them into the HTML report.
        "reports": reports,
    }


def combined_html(title: str, table: str, reports: dict[str, tuple[str, str]],
                  measurements: dict) -> str:
    """One self-contained page: the printed table (with the ratios), then the charts of every
    line that refresh-bench measured (its last round's `--report` page, without its title)."""
    esc = html.escape
    style = ""
    for _, page in reports.values():
        m = re.search(r"<style>(.*?)</style>", page, re.S)
        if m:
            style = m.group(1)
            break
    parts = [f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
             f"<style>{style} pre{{font-size:12px}} h2.line{{border-top:2px solid #ccc;padding-top:12px}}"
             f"</style></head><body>\n<h1>{esc(title)}</h1>\n"
             "<p>The table the harness printed (medians over the rounds, same-run ratios, targets); "
             "below it, each refresh-bench line's charts from its last round. Lines measured by "
             "wrk or redis-benchmark have numbers only.</p>\n",
             f"<pre>{esc(table)}</pre>\n"]
    for key, (label, page) in reports.items():
        body = re.search(r"<body>(.*)</body>", page, re.S)
        if not body:
            continue
        inner = re.sub(r"<h1>.*?</h1>", "", body.group(1), count=1, flags=re.S)
        inner = inner.replace("<h2>", "<h3>").replace("</h2>", "</h3>")
        parts.append(f'<h2 class="line" id="{esc(key)}">{esc(label)}</h2>\n{inner}\n')
    others = [v["label"] for k, v in measurements.items() if k not in reports]
    if others:
        parts.append("<h2 class=\"line\">Lines without charts</h2>\n<ul>"
                     + "".join(f"<li>{esc(o)}</li>" for o in others) + "</ul>\n")
    parts.append("</body></html>\n")
    return "".join(parts)


def redis_per_family(args: argparse.Namespace, procs: Processes, tmp: Path, upstream: str) -> dict:
    """used_memory of a fresh redis-server before and after issuing --families families through
    the admin API (refresh-proxy issue), divided by the count."""
    r = Redis(procs, tmp, "redis-memory")
    proxy = Proxy(procs, tmp, "proxy-memory-line", r.url, "rp:", "ES256", "jwt", upstream)
    before = r.used_memory()
    t = time.monotonic()
    # The tokens themselves are not needed: only what the families cost Redis.
    proxy.issue(args.families, "/dev/null", subject="bench-memory")
    took = time.monotonic() - t
    after = r.used_memory()
    keys = int(r.cli("DBSIZE").strip())
    sample = [k for k in r.cli("SCAN", "0", "MATCH", "rp:{*}:f", "COUNT", "1000").split()[1:] if k.endswith(":f")]
    family_key_bytes = int(r.cli("MEMORY", "USAGE", sample[0], "SAMPLES", "0").strip()) if sample else None
    sub_idx = int(r.cli("MEMORY", "USAGE", "rp:idx:sub:bench-memory", "SAMPLES", "0").strip() or 0)
    client_idx = int(r.cli("MEMORY", "USAGE", f"rp:idx:client-subjects:{CLIENT_ID}", "SAMPLES", "0").strip() or 0)
    procs.stop(proxy.proc)
    procs.stop(r.proc)
    per = (after - before) / args.families
    log(f"Redis: {args.families:,} families in {took:.1f} s, {per:.0f} bytes each (used_memory), {keys:,} keys")
    return {
        "label": f"Redis used_memory per family ({args.families:,} issued)", "unit": "bytes",
        "values": [round(per, 1)], "median": round(per, 1), "min": round(per, 1), "max": round(per, 1),
        "families": args.families, "used_memory_before": before, "used_memory_after": after, "keys": keys,
        "issue_s": round(took, 2),
        "memory_usage_one_family_hash": family_key_bytes,
        "memory_usage_subject_index_per_family": round(sub_idx / args.families, 1),
        "memory_usage_client_index_per_family": round(client_idx / args.families, 1),
    }


def startup(args: argparse.Namespace, procs: Processes, tmp: Path, upstream: str) -> dict:
    """Time from spawning the proxy (memory://) to its first 200 on /readyz."""
    times = []
    for i in range(args.startups):
        port, admin = free_port(), free_port()
        cfg = tmp / f"startup-{i}.toml"
        cfg.write_text(proxy_config(port, admin, "memory://", "rp:", "ES256", "jwt", upstream))
        t0 = time.perf_counter()
        proc = procs.start("startup", [str(PROXY_BIN), "--config", str(cfg)], tmp / "startup.log")
        while True:
            status = _poll_ready(admin)
            if status == 200:
                break
            if proc.poll() is not None or time.perf_counter() - t0 > 10:
                raise RuntimeError(f"the proxy did not become ready; see {tmp / 'startup.log'}")
            time.sleep(0.0005)
        times.append((time.perf_counter() - t0) * 1000)
        procs.stop(proc)
    m = summary(times)
    m.update(label="start-up to ready, memory:// (spawn → /readyz 200)", unit="ms")
    log(f"start-up: median {m['median']:.1f} ms over {len(times)}")
    return m


def _poll_ready(port: int) -> int | None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    except OSError:
        return None
    try:
        s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = s.recv(64)
        m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
        return int(m.group(1)) if m else None
    except OSError:
        return None
    finally:
        s.close()


# --------------------------------------------------------------------------------------------
# Targets and the table


def evaluate(m: dict) -> list[dict]:
    def ratio_line(name, a, b, op, target, note=""):
        av, bv = m[a]["median"], m[b]["median"]
        ratio = av / bv if bv else float("inf")
        per_round = [x / y for x, y in zip(m[a]["values"], m[b]["values"]) if y]
        ok = ratio >= target if op == ">=" else ratio <= target
        return {"name": name, "a": a, "b": b, "a_median": av, "a_min": m[a]["min"], "a_max": m[a]["max"],
                "b_median": bv, "ratio": round(ratio, 3),
                "ratio_per_round": [round(x, 3) for x in per_round],
                "op": op, "target": target, "result": "PASS" if ok else "MISS", "unit": m[a]["unit"],
                "note": note}

    def absolute_line(name, a, op, target, note=""):
        av = m[a]["median"]
        ok = av <= target if op == "<=" else av >= target
        return {"name": name, "a": a, "b": None, "a_median": av, "a_min": m[a]["min"], "a_max": m[a]["max"],
                "b_median": None, "ratio": None, "op": op, "target": target,
                "result": "PASS" if ok else "MISS", "unit": m[a]["unit"], "note": note}

    lines = []
    if "cluster_spread" in m:
        c = m["cluster_spread"]
        lines.append(absolute_line(
            f"{len(c['masters'])}-master cluster: share vs slots", "cluster_spread", "<=",
            c["tolerance_pct"],
            note="worst |share / slot share - 1| of a master's redemptions and family keys: " + ", ".join(
                f"{x['slots']} slots {x['redemption_deviation_pct']:+.1f} / {x['key_deviation_pct']:+.1f} %"
                for x in c["masters"]) + f" ({c['families']:,} families, {c['connections']:,} chains)"))
    if "refresh_es256_redis" not in m:
        return lines
    fwd_added = {
        k: m[k]["median"] - m["open_fwd_direct"]["median"] for k in ("open_fwd_proxy", "open_fwd_nginx")
    }
    return [
        ratio_line("refresh ES256+Redis / redis-benchmark EVALSHA", "refresh_es256_redis", "evalsha", ">=", 0.60),
        ratio_line("refresh ES256+Redis / nginx proxy_pass", "refresh_es256_redis", "nginx_get", ">=", 0.75),
        ratio_line("refresh ES256+Redis / IdP's own refresh", "refresh_es256_redis", "idp_refresh", ">=", 15),
        ratio_line("refresh EdDSA / ES256 (Redis)", "refresh_eddsa_redis", "refresh_es256_redis", ">=", 1.0),
        ratio_line("refresh opaque / ES256 JWT (Redis)", "refresh_opaque_redis", "refresh_es256_redis", ">=", 1.1),
        ratio_line("refresh memory:// / Redis (ES256)", "refresh_es256_memory", "refresh_es256_redis", ">=", 1.3),
        ratio_line("forwarding req/s: proxy / nginx (wrk)", "fwd_proxy_wrk", "fwd_nginx_wrk", ">=", 1.0),
        ratio_line("CPU per ES256 refresh / floor", "cpu_refresh", "cpu_floor", "<=", 1.25,
                   note=f"floor = {m['cpu_floor']['sign_us']} µs a signature (openssl speed, one core, "
                        f"median of one measurement after each round) + the proxy's kernel time per refresh"),
        ratio_line("CPU per forwarded GET: proxy / nginx", "cpu_fwd_proxy", "cpu_fwd_nginx", "<=", 1.0),
        ratio_line(f"forwarding p99 at {m['open_fwd_proxy']['rate']:,}/s: proxy / nginx", "open_fwd_proxy",
                   "open_fwd_nginx", "<=", 1.0,
                   note=f"added p99 over direct: proxy {fwd_added['open_fwd_proxy']:.0f} µs, "
                        f"nginx {fwd_added['open_fwd_nginx']:.0f} µs "
                        f"(direct p99 {m['open_fwd_direct']['median']:.0f} µs)"),
        ratio_line(f"refresh p99 at {m['open_refresh']['rate']:,}/s: refresh / nginx", "open_refresh",
                   "open_nginx_at_refresh_rate", "<=", 1.0),
        ratio_line("refresh p99 / nginx p99, each at half its max", "open_refresh",
                   "open_nginx_equal_load", "<=", 1.0,
                   note=f"refresh at {m['open_refresh']['rate']:,}/s, "
                        f"nginx at {m['open_nginx_equal_load']['rate']:,}/s"),
        absolute_line("proxy peak RSS", "proxy_peak_rss", "<=", 50),
        absolute_line("Redis memory per live family", "redis_bytes_per_family", "<=", 400),
        absolute_line("start-up to ready (memory://)", "startup_ms", "<=", 100),
    ] + lines


def fmt_num(v) -> str:
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.1f}"


def open_loop_table(m: dict) -> list[str]:
    """Each open-loop line's percentiles from the intended send time (queueing included) and
    from the actual send (service time), then where the refresh line's time went."""
    opened = [(k, v) for k, v in m.items() if "service_p99_us" in v]
    if not opened:
        return []
    out = ["", "open loop (µs, medians over the rounds): from the intended send time | from the actual send",
           f"{'line':<52} {'rate/s':>8} {'p50':>8} {'p99':>8} {'p999':>8} | {'p99':>8} {'p999':>8}"]
    for _, v in opened:
        out.append(f"{v['label'].removesuffix(': p99')[:52]:<52} {v['rate']:>8,} {fmt_num(v['p50_us']['median']):>8} "
                   f"{fmt_num(v['median']):>8} {fmt_num(v['p999_us']['median']):>8} | "
                   f"{fmt_num(v['service_p99_us']['median']):>8} {fmt_num(v['service_p999_us']['median']):>8}")
    for _, v in opened:
        phases = v.get("phases_us")
        if not phases:
            continue
        parts = ["latency", "queued", "outside", "form", "auth", "prep", "store", "mint"]
        out += ["", f"where the time went: {v['label'].removesuffix(': p99')} at {v['rate']:,}/s "
                    "(µs, means per band, medians over the rounds; Server-Timing)",
                f"{'band':<20} {'answers':>8} " + " ".join(f"{p:>8}" for p in parts)]
        for band, label in (("all", "all answers"), ("slowest_1pct", "slowest 1 %"),
                            ("slowest_0_1pct", "slowest 0.1 %")):
            if band in phases:
                b = phases[band]
                out.append(f"{label:<20} {b['requests']:>8,.0f} " + " ".join(f"{b[p]:>8,.0f}" for p in parts))
    return out


def render(results: dict) -> str:
    m, t, run_ = results["measurements"], results["targets"], results["run"]
    mc = run_["machine"]
    lines = [
        f"refresh-proxy benchmark: {run_['rounds']} rounds, {run_['duration_s']:g} s per run "
        f"(+{run_['warmup_s']:g} s warm-up for refresh-bench), {run_['connections']} connections; "
        f"{mc['cpus']} × {mc['cpu']}",
        "",
        f"{'measurement':<52} {'unit':>6} {'median':>10} {'min':>10} {'max':>10}",
    ]
    for key, v in m.items():
        lines.append(f"{v['label'][:52]:<52} {v['unit']:>6} {fmt_num(v['median']):>10} "
                     f"{fmt_num(v['min']):>10} {fmt_num(v['max']):>10}")
    if any(v.get("cpu_us_per_request") for v in m.values()):
        lines += ["", "CPU per request (µs, medians; 'outside': processes not part of the benchmark and "
                      "interrupts; 'cores': of the 2 busy)",
                  f"{'closed-loop run':<52} " + " ".join(f"{g:>9}" for g in CPU_GROUPS) + f" {'cores':>6}"]
    for key, v in m.items():
        cpu = v.get("cpu_us_per_request")
        if cpu:
            lines.append(f"{v['label'][:52]:<52} " + " ".join(f"{fmt_num(cpu.get(g)):>9}" for g in CPU_GROUPS)
                         + f" {v['cores_busy']:>6.2f}")
    lines += open_loop_table(m)
    lines += ["", f"{'target line':<46} {'median':>9} {'min':>9} {'max':>9} {'baseline':>9} "
                  f"{'ratio':>7} {'per round':>11} {'target':>11}  result"]
    for x in t:
        target = f"{x['op'].replace('>=', '≥').replace('<=', '≤')} {x['target']:g}"
        if x["ratio"] is None:
            target += f" {x['unit']}"
        rounds = x.get("ratio_per_round") or []
        spread = f"{fmt_num(min(rounds))}–{fmt_num(max(rounds))}" if rounds else "-"
        lines.append(
            f"{x['name'][:46]:<46} {fmt_num(x['a_median']):>9} {fmt_num(x['a_min']):>9} {fmt_num(x['a_max']):>9} "
            f"{fmt_num(x['b_median']):>9} {fmt_num(x['ratio']):>7} {spread:>11} {target:>11}  {x['result']}")
        if x.get("note"):
            lines.append(f"    {x['note']}")
    passed = sum(1 for x in t if x["result"] == "PASS")
    lines += ["", f"{passed} of {len(t)} targets met; ratio = median / median of the same run; "
                  "per round: the lowest and highest ratio of one round's adjacent pair"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
