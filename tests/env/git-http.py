#!/usr/bin/env python3
"""tests/env/git-http.py: Git's smart HTTP protocol on 127.0.0.1 for the test environment.

Usage: git-http.py ADDR:PORT ROOT

Serves every bare repository under ROOT (`http://ADDR:PORT/<name>.git`, clone, fetch and push)
by running Debian's `git http-backend` as a CGI program per request, the way a web server would.
Pushes need no credentials (REMOTE_USER is set for http-backend): the server only ever listens on
loopback and serves throwaway repositories the tests create. Standard library only.
"""

import http.server
import os
import subprocess
import sys

BACKEND = "/usr/lib/git-core/git-http-backend"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: simple and enough for tests

    def do_GET(self):
        self.run_backend()

    def do_POST(self):
        self.run_backend()

    def request_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()  # the CRLF after the last chunk
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def run_backend(self):
        path, _, query = self.path.partition("?")
        body = self.request_body() if self.command == "POST" else b""
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.server.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_HTTP_MAX_REQUEST_BUFFER": "100M",
            "REMOTE_USER": "sluice-test",
            "REMOTE_ADDR": self.client_address[0],
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
        }
        for name in ("Content-Encoding", "Git-Protocol"):
            if name in self.headers:
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]
        proc = subprocess.run([BACKEND], input=body, env=env, capture_output=True)
        head, _, out = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, out = proc.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        if proc.returncode != 0 and status == 200:
            status = 500
            out = proc.stderr
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
        if proc.stderr:
            sys.stderr.write(proc.stderr.decode("utf-8", "replace"))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    host, _, port = sys.argv[1].rpartition(":")
    server = http.server.ThreadingHTTPServer((host, int(port)), Handler)
    server.root = os.path.abspath(sys.argv[2])
    server.serve_forever()


if __name__ == "__main__":
    main()
