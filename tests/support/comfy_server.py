"""A real ComfyUI server (``main.py``, headless on CPU) in a temporary base directory, for end-to-end tests that
talk to it over HTTP like the frontend does: POST /prompt, poll /history, POST /interrupt."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Optional

from conftest import comfyui_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    pass


class ComfyServer:
    """``python main.py --cpu ... --base-directory base`` with its log in ``log_path``; stop() ends it."""

    def __init__(self, base: Path, log_path: Path, start_timeout: float = 180.0):
        self.base = Path(base)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.client_id = uuid.uuid4().hex
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "w")
        command = [
            sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
            "--dont-print-server", "--base-directory", str(self.base), "--database-url", "sqlite:///:memory:",
        ]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=comfyui_path(), stdout=self._log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + start_timeout
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ServerError(f"ComfyUI did not start within {start_timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.3)

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: Optional[dict] = None) -> Any:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read()
        except urllib.error.HTTPError as error:
            raise ServerError(f"POST {path} -> {error.code}: {error.read().decode(errors='replace')[:3000]}") from None
        return json.loads(text) if text.strip() else None

    def queue(self, prompt: dict) -> str:
        """POST /prompt (API format); returns the prompt id. A validation error raises with ComfyUI's message."""
        return self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0) -> dict:
        """Polls /history until the prompt is done (success or error); returns its history entry."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                entry["status"]["completed"] or entry["status"].get("status_str") == "error"
            ):
                return entry
            if self.process.poll() is not None:
                raise ServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()


def execution_error(entry: dict) -> Optional[dict]:
    """The ``execution_error`` message of a history entry, if the prompt failed."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None


def run_prompt(server: ComfyServer, prompt: dict, timeout: float = 300.0) -> dict:
    """Queues ``prompt``, waits, and fails with ComfyUI's error (and the log tail) unless it succeeded."""
    entry = server.wait(server.queue(prompt), timeout)
    error = execution_error(entry)
    if entry["status"].get("status_str") != "success" or error:
        detail = json.dumps(error, indent=1)[:4000] if error else json.dumps(entry["status"])[:2000]
        raise ServerError(f"prompt failed: {detail}\n--- server log ---\n{server.log_tail()}")
    return entry
