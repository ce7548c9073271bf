"""Worker processes started through the `katana worker` CLI, and waiting on them with deadlines."""

from __future__ import annotations

import asyncio
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    import signal
    from collections.abc import Awaitable, Callable, Mapping

__all__ = [
    "POLL_SECONDS",
    "REPO_ROOT",
    "WorkerProcess",
    "WorkerProcesses",
    "read_until",
    "wait_until",
]

#: The CLI imports ``tests.integration.chaos_app`` from its working directory.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: How often the tests look at work other processes do.
POLL_SECONDS = 0.05


class WorkerProcess:
    """One ``katana worker`` process, its output going to a log file."""

    def __init__(self, popen: subprocess.Popen[bytes], log_path: Path, log: IO[bytes]) -> None:
        self.popen = popen
        self.log_path = log_path
        self._log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, signum: signal.Signals) -> None:
        if self.alive():
            os.kill(self.pid, signum)

    async def wait(self, timeout: float) -> int:
        """The exit code, once the process has exited; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (code := self.popen.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.pid} still runs after {timeout:.1f}s\n{self.output()}"
                )
            await asyncio.sleep(POLL_SECONDS)
        return code

    def output(self) -> str:
        """What the process wrote to stdout and stderr so far (the end of it, if long)."""
        self._log.flush()
        text = self.log_path.read_text(errors="replace")
        return text if len(text) < 4000 else "...\n" + text[-4000:]

    def stop(self) -> None:
        """Kill the process if it still runs, and release its log file."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=10)
        self._log.close()


class WorkerProcesses:
    """Starts CLI workers and kills every one still running when the test ends."""

    def __init__(self, log_dir: Path, env: Mapping[str, str]) -> None:
        self._log_dir = log_dir
        # KATANA_BROKER_URL would override the app's broker (it is --broker's env var).
        inherited = {k: v for k, v in os.environ.items() if k != "KATANA_BROKER_URL"}
        self._env = {**inherited, **env}
        self.started: list[WorkerProcess] = []
        self._piped: list[subprocess.Popen[bytes]] = []

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "katana.task_queue.cli", "worker", *args]

    def start(
        self, *args: str, app: str = "tests.integration.chaos_app:make_service"
    ) -> WorkerProcess:
        """Run ``katana worker APP *args`` from the repository root."""
        log_path = self._log_dir / f"worker-{len(self.started) + 1}.log"
        log = log_path.open("wb")
        popen = subprocess.Popen(
            self.command(app, *args),
            cwd=REPO_ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        worker = WorkerProcess(popen, log_path, log)
        self.started.append(worker)
        return worker

    def run(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``katana worker *args`` to its end, capturing stdout and stderr apart."""
        return subprocess.run(
            self.command(*args),
            cwd=REPO_ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def run_admin(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``katana *args`` (an admin command such as ``task``) in the workers' setting."""
        return subprocess.run(
            [sys.executable, "-m", "katana.task_queue.cli", *args],
            cwd=REPO_ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start_piped(self, *args: str) -> subprocess.Popen[bytes]:
        """Run ``katana worker *args`` with stderr on a pipe (see ``read_until``)."""
        popen = subprocess.Popen(
            self.command(*args),
            cwd=REPO_ROOT,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._piped.append(popen)
        return popen

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()
        for popen in self._piped:
            if popen.poll() is None:
                popen.kill()
            popen.communicate(timeout=10)


def read_until(stream: IO[bytes], marker: bytes, timeout: float) -> bytes:
    """Read ``stream`` until ``marker`` shows up or it ends; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    received = b""
    fd = stream.fileno()
    while marker not in received:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} not seen within {timeout:.1f}s in {received!r}")
        readable, _, _ = select.select([fd], [], [], left)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            received += chunk
    return received


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    """Poll ``condition`` every POLL_SECONDS until it holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)
