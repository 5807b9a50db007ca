"""The real ComfyUI server (the host tree's main.py) on 127.0.0.1, for the demo and the
browser test: start it on a free port with a base directory of ours, wait for /object_info,
talk to it over HTTP, and stop it (terminate, then kill after 20 s)."""
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import comfy_host


class ServerError(RuntimeError):
    """The server exited or did not come up; the message ends with its log."""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A context manager: `with ComfyServer(base) as server:` starts it and waits until
    it answers; leaving the block stops it."""

    def __init__(self, base, extra_args=(), ready_timeout=120):
        self.base = Path(base)
        self.extra_args = list(extra_args)
        self.ready_timeout = ready_timeout
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.base / "server.log"
        self.proc = None
        self.object_info = None

    def __enter__(self):
        self._log = open(self.log_path, "w")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                 "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
                 "--disable-auto-launch", *self.extra_args],
                cwd=comfy_host.HOST, stdout=self._log, stderr=subprocess.STDOUT)
            self.object_info = self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()

    def _wait_ready(self):
        deadline = time.time() + self.ready_timeout
        while True:
            try:
                return self.get_json("/object_info")
            except (urllib.error.URLError, ConnectionError, OSError):
                if not self.alive():
                    raise ServerError(f"the ComfyUI server exited:\n{self.log_tail()}") from None
                if time.time() > deadline:
                    raise ServerError(f"the ComfyUI server did not come up in {self.ready_timeout} s:\n"
                                      f"{self.log_tail()}") from None
                time.sleep(0.5)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def request(self, path, data=None, timeout=30):
        """The body of a GET (or, with data, a JSON POST) as bytes."""
        req = urllib.request.Request(self.url + path, method="POST" if data is not None else "GET",
                                     data=json.dumps(data).encode() if data is not None else None,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read()

    def get_json(self, path, data=None):
        return json.loads(self.request(path, data))

    def log_tail(self, n=4000):
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
