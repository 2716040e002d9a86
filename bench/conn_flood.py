#!/usr/bin/env python3
"""Peak memory of refresh-proxy under hostile connections (bench/README.md, "Connection floods").

For each scenario a fresh proxy (memory store, in front of a tiny upstream this script runs)
is attacked for --duration seconds while a well-behaved client keeps refreshing a token chain
and forwarding GETs on new connections; then the proxy's peak resident memory (VmHWM from
/proc/<pid>/status) is read. Scenarios:

  heads   N HTTP/1.1 connections each sending one endless request head, 4 KiB every 100 ms
          (a slowloris that fills whatever the proxy buffers per head); closed ones reconnect
  bodies  N HTTP/1.1 token requests declaring 65,536 bytes, each sending all but the last
          byte, then nothing; closed ones reconnect
  streams C HTTP/2 connections each opening 200 token streams that declare 65,536 bytes and
          send all but the last byte (respecting flow control), then nothing; closed ones
          reconnect

Only the Python standard library; the HTTP/2 frames are written by hand (HPACK literals
without Huffman coding). Every process started here is stopped by its own pid.

    python3 bench/conn_flood.py --binary target/release/refresh-proxy
    python3 bench/conn_flood.py --binary OLD --binary NEW --json out.json
"""

from __future__ import annotations

import argparse
import base64
import http.client
import http.server
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ports import free_port  # noqa: E402

ADMIN_TOKEN = "flood-admin-token-0123456789"
CLIENT_SECRET = "flood-client-secret"
REFRESH_KEY = "flood-refresh-token-key-0123456789abcdef"
BODY = 65536


class Upstream(http.server.BaseHTTPRequestHandler):
    """Answers everything 200 with a small JSON body, reading any request body first."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = b'{"ok":true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


def start_upstream() -> tuple[http.server.ThreadingHTTPServer, int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


class Proxy:
    def __init__(self, binary: str, upstream_port: int, workdir: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        config = workdir / f"proxy-{self.port}.toml"
        config.write_text(
            f"""[server]
listen = "127.0.0.1:{self.port}"
admin_listen = "127.0.0.1:{self.admin_port}"
[tokens]
refresh_token_key = "{REFRESH_KEY}"
[admin]
token = "{ADMIN_TOKEN}"
[clients.www]
secret = "{CLIENT_SECRET}"
[log]
level = "error"
access_log = false
[upstream]
url = "http://127.0.0.1:{upstream_port}"
discovery = false
token_path = "/token"
revocation = "absent"
"""
        )
        self.proc = subprocess.Popen(
            [binary, "--config", str(config)], stdout=subprocess.DEVNULL
        )
        deadline = time.time() + 15
        while time.time() < deadline:
            if status(self.admin_port, "/readyz") == 200:
                return
            time.sleep(0.02)
        raise RuntimeError("the proxy did not become ready")

    def rss_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"no {field}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def status(port: int, path: str) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return None
    finally:
        conn.close()


def issue(proxy: Proxy) -> str:
    req = urllib.request.Request(
        f"http://127.0.0.1:{proxy.admin_port}/admin/issue",
        data=json.dumps({"client_id": "www", "subject": "flood", "count": 1}).encode(),
        headers={"authorization": f"Bearer {ADMIN_TOKEN}", "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)["refresh_tokens"][0]


def good_client(proxy: Proxy, stop: threading.Event, result: dict) -> None:
    """Refreshes one chain and forwards a GET, each on a new connection, every 50 ms until
    `stop`; counts the requests answered 200 and the others."""
    rt = issue(proxy)
    auth = "Basic " + base64.b64encode(f"www:{CLIENT_SECRET}".encode()).decode()
    ok = failed = 0
    while not stop.is_set():
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
            body = urllib.parse.urlencode({"grant_type": "refresh_token", "refresh_token": rt})
            conn.request(
                "POST",
                "/token",
                body,
                {"content-type": "application/x-www-form-urlencoded", "authorization": auth},
            )
            resp = conn.getresponse()
            answer = resp.read()
            conn.close()
            if resp.status == 200:
                rt = json.loads(answer)["refresh_token"]
                ok += 1
            else:
                failed += 1
            if status(proxy.port, "/resource") == 200:
                ok += 1
            else:
                failed += 1
        except OSError:
            failed += 1
        time.sleep(0.05)
    result.update(ok=ok, failed=failed)


# ---- attackers: one thread, non-blocking sockets -------------------------------------------


class Attack:
    """N connections driven by `step` every 100 ms; closed ones are opened again."""

    def __init__(self, port: int, n: int) -> None:
        self.port, self.n = port, n
        self.conns: list[dict] = []
        self.reconnects = 0

    def open(self) -> dict:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", self.port))
        except BlockingIOError:
            pass
        return {"sock": s, "sent": 0, "state": {}}

    def send(self, c: dict, data: bytes) -> bool:
        try:
            n = c["sock"].send(data)
            c["sent"] += n
            return True
        except BlockingIOError:
            return True
        except OSError:
            return False

    def alive(self, c: dict) -> bool:
        try:
            data = c["sock"].recv(65536)
            if data == b"":
                return False
            self.received(c, data)
            return True
        except BlockingIOError:
            return True
        except OSError:
            return False

    def received(self, c: dict, data: bytes) -> None:
        pass

    def run(self, stop: threading.Event) -> None:
        self.conns = [self.open() for _ in range(self.n)]
        while not stop.is_set():
            for i, c in enumerate(self.conns):
                if not self.alive(c) or not self.step(c):
                    c["sock"].close()
                    self.conns[i] = self.open()
                    self.reconnects += 1
            time.sleep(0.1)
        for c in self.conns:
            c["sock"].close()

    def step(self, c: dict) -> bool:
        raise NotImplementedError


class Heads(Attack):
    def step(self, c: dict) -> bool:
        if c["sent"] == 0:
            return self.send(c, b"GET /slowloris HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        return self.send(c, b"a" * 4096)


class Bodies(Attack):
    def step(self, c: dict) -> bool:
        if c["sent"] == 0:
            head = (
                "POST /token HTTP/1.1\r\nHost: x\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n"
                f"Content-Length: {BODY}\r\n\r\n"
            ).encode()
            c["state"]["end"] = len(head) + BODY - 1
            return self.send(c, head + b"grant_type=password&pad=" + b"a" * (BODY - 25))
        left = c["state"]["end"] - c["sent"]
        return self.send(c, b"a" * left) if left > 0 else True


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    def integer(n: int) -> bytes:
        if n < 127:
            return bytes([n])
        out, n = [127], n - 127
        while n >= 128:
            out.append(n % 128 | 0x80)
            n //= 128
        return bytes(out + [n])

    return b"\x00" + integer(len(name)) + name + integer(len(value)) + value


class Streams(Attack):
    """HTTP/2: 200 token streams per connection, each sending BODY - 1 bytes."""

    STREAMS = 200

    def step(self, c: dict) -> bool:
        st = c["state"]
        if c["sent"] == 0:
            block = b"".join(
                literal(n, v)
                for n, v in [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", b"/token"),
                    (b":authority", b"x"),
                    (b"content-type", b"application/x-www-form-urlencoded"),
                    (b"content-length", str(BODY).encode()),
                ]
            )
            st.update(buf=b"", conn_window=65535, window={}, left={}, refused=set(), initial=65535)
            out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0, b"")
            for i in range(self.STREAMS):
                sid = 1 + 2 * i
                out += frame(1, 4, sid, block)
                st["window"][sid] = 65535
                st["left"][sid] = BODY - 1
            st["out"] = out
        if st["out"]:
            try:
                n = c["sock"].send(st["out"])
                c["sent"] += n
                st["out"] = st["out"][n:]
            except BlockingIOError:
                return True
            except OSError:
                return False
            if st["out"]:
                return True
        # Body bytes, as flow control allows.
        for sid, left in st["left"].items():
            if left == 0 or sid in st["refused"]:
                continue
            n = min(left, st["window"][sid], st["conn_window"], 16384)
            if n <= 0:
                continue
            data = frame(0, 0, sid, b"a" * n)
            try:
                sent = c["sock"].send(data)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if sent < len(data):
                st["out"] = data[sent:]
            st["left"][sid] -= n
            st["window"][sid] -= n
            st["conn_window"] -= n
            if st["out"]:
                return True
        return True

    def received(self, c: dict, data: bytes) -> None:
        st = c["state"]
        if "buf" not in st:
            return
        st["buf"] += data
        buf = st["buf"]
        while len(buf) >= 9:
            length = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + length:
                break
            kind, flags, sid = buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = buf[9 : 9 + length]
            buf = buf[9 + length :]
            if kind == 4 and not flags & 1:  # SETTINGS: INITIAL_WINDOW_SIZE, then ACK
                for j in range(0, len(payload), 6):
                    ident, value = struct.unpack(">HI", payload[j : j + 6])
                    if ident == 4:
                        for s in st["window"]:
                            st["window"][s] += value - st["initial"]
                        st["initial"] = value
                st["out"] = st.get("out", b"") + frame(4, 1, 0, b"")
            elif kind == 8:  # WINDOW_UPDATE
                inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                if sid == 0:
                    st["conn_window"] += inc
                elif sid in st["window"]:
                    st["window"][sid] += inc
            elif kind == 3:  # RST_STREAM
                st["refused"].add(sid)
            elif kind == 6 and not flags & 1:  # PING
                st["out"] = st.get("out", b"") + frame(6, 1, 0, payload)
        st["buf"] = buf


SCENARIOS = {"heads": Heads, "bodies": Bodies, "streams": Streams}


def run(binary: str, scenario: str, n: int, duration: float, upstream_port: int, workdir: Path) -> dict:
    proxy = Proxy(binary, upstream_port, workdir)
    try:
        before = proxy.rss_kib("VmHWM")
        stop = threading.Event()
        good: dict = {}
        attack = SCENARIOS[scenario](proxy.port, n)
        threads = [
            threading.Thread(target=attack.run, args=(stop,)),
            threading.Thread(target=good_client, args=(proxy, stop, good)),
        ]
        for t in threads:
            t.start()
        time.sleep(duration)
        peak = proxy.rss_kib("VmHWM")
        stop.set()
        for t in threads:
            t.join()
        return {
            "binary": binary,
            "scenario": scenario,
            "connections": n,
            "rss_before_mib": round(before / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
            "reconnects": attack.reconnects,
            "good_ok": good.get("ok", 0),
            "good_failed": good.get("failed", 0),
        }
    finally:
        proxy.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", action="append", required=True, help="refresh-proxy binary (repeatable)")
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    parser.add_argument("--connections", type=int, default=1000, help="HTTP/1.1 connections (heads, bodies)")
    parser.add_argument("--h2-connections", type=int, default=20, help="HTTP/2 connections (streams)")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds of attack per scenario")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    upstream, upstream_port = start_upstream()
    results = []
    with tempfile.TemporaryDirectory(prefix="conn-flood-") as tmp:
        for scenario in args.scenario or ["heads", "bodies", "streams"]:
            n = args.h2_connections if scenario == "streams" else args.connections
            for binary in args.binary:
                r = run(binary, scenario, n, args.duration, upstream_port, Path(tmp))
                results.append(r)
                print(
                    f"{scenario:8} {n:5} conns  {r['rss_before_mib']:7.1f} -> {r['peak_rss_mib']:7.1f} MiB peak"
                    f"  reconnects {r['reconnects']:6}  good client {r['good_ok']} ok / {r['good_failed']} failed"
                    f"  {binary}",
                    flush=True,
                )
    upstream.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
