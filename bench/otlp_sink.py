#!/usr/bin/env python3
"""An OTLP/HTTP receiver that accepts and drops spans, for measuring the proxy with traces on.

    python3 bench/otlp_sink.py 4318 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python3 bench/callgrind.py BIN

Answers 200 to every POST /v1/traces (protobuf not decoded) and prints, on SIGINT or SIGTERM,
how many requests and bytes it got. bench/README.md, "What traces cost".
"""
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

got = {"requests": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        ok = self.path == "/v1/traces"
        if ok:
            got["requests"] += 1
            got["bytes"] += len(body)
        self.send_response(200 if ok else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1]) if len(sys.argv) > 1 else 4318), Sink)

    def stop(*_):
        print(f"otlp_sink: {got['requests']} exports, {got['bytes']} bytes", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
