"""A node of this project started for a benchmark run: ``twistd -n gochat`` in
a child process, on the embedded defaults, a fresh data directory and free
loopback ports, with an open-file limit that fits the connections scenario."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from gochat.bench.worker import raise_nofile

NODE_NOFILE = 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class LocalNode:
    process: subprocess.Popen[bytes]
    data_dir: str
    http: str
    ws: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_local_node(data_dir: str | None = None, extra: list[str] | None = None) -> LocalNode:
    """Start a node and wait (at most 60 s) until its WebSocket port accepts."""
    data_dir = data_dir or tempfile.mkdtemp(prefix="gochat-bench-")
    http_port, ws_port = free_port(), free_port()
    raise_nofile(NODE_NOFILE)  # the child inherits the limit
    log = open(os.path.join(data_dir, "node.log"), "ab")  # noqa: SIM115 - owned by the child
    argv = [
        sys.executable,
        "-c",
        "from twisted.scripts.twistd import run; run()",
        "-n",
        "--pidfile=",
        "gochat",
        f"--http=tcp:{http_port}:interface=127.0.0.1",
        f"--ws=tcp:{ws_port}:interface=127.0.0.1",
        f"--data-dir={data_dir}",
        *(extra or []),
    ]
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=data_dir)
    log.close()
    node = LocalNode(
        process, data_dir, f"http://127.0.0.1:{http_port}", f"ws://127.0.0.1:{ws_port}/ws"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"the node exited with status {process.returncode}; see {data_dir}/node.log"
            )
        try:
            socket.create_connection(("127.0.0.1", ws_port), timeout=1).close()
            socket.create_connection(("127.0.0.1", http_port), timeout=1).close()
            return node
        except OSError:
            time.sleep(0.1)
    node.stop()
    raise RuntimeError(f"the node did not listen within 60 s; see {data_dir}/node.log")
