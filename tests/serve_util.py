"""A live `imp serve` in a subprocess on 127.0.0.1 and a free port, as a client sees it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.cli_util import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, model: Path, *args: str, log: Path, api_key: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.api_key = api_key
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMP_")}
        env["IMP_USER_CONFIG"] = str(REPO / "tests" / "no-such-user-config.toml")
        cmd = [sys.executable, "-m", "imp_core.cli", "serve", "--model", str(model), "--port", str(self.port),
               "--device", "cpu", *args, *(["--api-key", api_key] if api_key else [])]
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imp serve exited with {self.proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"imp serve did not come up:\n{log.read_text()}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def post(self, path: str, body=None, *, content: bytes | None = None, **kw) -> httpx.Response:
        return httpx.post(self.url + path, json=body, content=content, headers=self.headers, timeout=60, **kw)

    def metric(self, name: str) -> float:
        """Sum of a metric's samples whose line starts with ``name`` (labels included in it)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}\S* (\S+)$", text, re.M))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode
