"""Run the peer benchmarks one after the other and print one comparison table.

The Redis queues, and two on SQLite: Katana's SqliteBroker (``katana_sqlite``) and huey's
SqliteHuey (``huey``); latency probes write to Redis for all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import common
import redis

REPO = common.PEERS_DIR.parents[1]
PEERS_PYTHON = REPO / "bench" / ".venv-peers" / "bin" / "python"
KATANA_PYTHON = REPO / "bench" / ".venv-katana" / "bin" / "python"
ALL_PEERS = ("arq", "saq", "streaq", "taskiq", "dramatiq", "katana", "katana_sqlite", "huey")
#: The SQLite queues: compared with each other, not with the Redis ones.
SQLITE_PEERS = ("katana_sqlite", "huey")
PEER_TIMEOUT = 900


def interpreter(peer: str) -> Path:
    """Katana runs from bench/.venv-katana, the other queues from bench/.venv-peers."""
    return KATANA_PYTHON if peer.startswith("katana") else PEERS_PYTHON


def run_peer(peer: str, redis_url: str, tasks: int) -> dict[str, Any]:
    """One peer module in its own interpreter; its JSON result, or an error entry."""
    python = interpreter(peer)
    if not python.exists():
        return {"peer": peer, "error": f"{python} not found (see bench/run_redis_bench.sh)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [str(python), str(common.PEERS_DIR / f"{peer}_bench.py"), "--redis-url",
                   redis_url, "--tasks", str(tasks), "--json-out", str(out)]  # fmt: skip
        returncode, stderr = _run_bounded(command)
        if returncode not in (0, common.EXIT_UNAVAILABLE):
            sys.stderr.write(stderr)
        if not out.exists():
            lines = stderr.strip().splitlines() or [f"exit status {returncode}"]
            return {"peer": peer, "error": lines[-1]}
        result: dict[str, Any] = json.loads(out.read_text())
    result["peer"] = peer
    return result


def _run_bounded(command: list[str]) -> tuple[int, str]:
    """Run a peer module; past PEER_TIMEOUT, SIGTERM it so that it stops its worker first."""
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = proc.communicate(timeout=PEER_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            _, stderr = proc.communicate(timeout=3 * common.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
        stderr += f"\ntook over {PEER_TIMEOUT}s: stopped\n"
    return proc.returncode, stderr


class OtherLoad:
    """CPUs' worth of work on the machine that is not this bench: it skews every number.

    Machine busy time (/proc/stat) minus what this process and its reaped children (peer
    modules, their workers) and redis-server used. Approximate: kernel time for loopback
    traffic is charged to no process, so a few hundredths of a CPU are the bench's own.
    """

    def __init__(self, redis_pid: int) -> None:
        self.redis_pid = redis_pid
        self.mark = self._sample()

    def _sample(self) -> tuple[float, float]:
        """(wall seconds, machine busy CPU seconds minus ours)."""
        ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]]
        busy = (sum(ticks) - ticks[3] - ticks[4]) / common.CLK_TCK  # all but idle and iowait
        times = os.times()
        ours = times.user + times.system + times.children_user + times.children_system
        redis_stat = common.proc_stat(self.redis_pid)
        ours += redis_stat[1] if redis_stat else 0.0
        return time.monotonic(), busy - ours

    def since_mark(self) -> float:
        """Other CPUs busy on average since the last call (or creation); resets the mark."""
        (wall_before, other_before), self.mark = self.mark, self._sample()
        return max(0.0, (self.mark[1] - other_before) / max(self.mark[0] - wall_before, 1e-9))


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    mem_kb = next(int(ln.split()[1]) for ln in meminfo if ln.startswith("MemTotal"))
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, {mem_kb / 2**20:.0f} GiB, "
        f"Linux {platform.release()}"
    )


def redis_server(url: str) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    try:
        return dict(client.info("server"))
    finally:
        client.close()


def print_report(results: list[dict[str, Any]], args: argparse.Namespace, server: dict[str, Any],
                 idle_other: float) -> None:  # fmt: skip
    rows = [common.table_rows(result) for result in results]
    print()
    now = datetime.now().astimezone()
    print(f"Redis task queues, {args.tasks:,} noop tasks each; {now:%Y-%m-%d %H:%M %Z}")
    print(f"machine: {machine()}")
    print(f"other work on the machine: {idle_other:.2f} CPUs before the start (see 'other CPUs')")
    version = server["redis_version"]
    print(f"redis {version} at {args.redis_url}; python {platform.python_version()}")
    for result in results:
        versions = ", ".join(f"{k} {v}" for k, v in result.get("versions", {}).items())
        print(f"  {result['peer']}: {versions or '-'}")
    print()
    print(common.format_table(common.COLUMNS, [main for main, _ in rows]))
    print()
    print(common.format_table(common.DETAIL_COLUMNS, [detail for _, detail in rows]))
    print()
    print("drain/s: worker spawn to last task done (includes interpreter start and imports);")
    print("steady/s: first to last task done. CPU: user+sys of the worker process tree over the")
    print("steady window, idle baseline (measured over 1 s, 10 ms tick resolution) subtracted;")
    print("main table at concurrency 10. Latency: 2,000 tasks at 200/s, worker at concurrency 10.")
    print("other CPUs: average CPU use on the machine by anything but this bench during the peer.")
    for result in results:
        if result.get("bulk_note"):
            print(f"{result['peer']} bulk n/a: {result['bulk_note']}")
    print_ratios(results)


def print_ratios(results: list[dict[str, Any]]) -> None:
    """Katana's rate over the best peer's in this run, for each enqueue measurement: on Redis
    among the Redis queues, and on SQLite against huey."""
    redis_results = [r for r in results if r["peer"] not in SQLITE_PEERS]
    sqlite_results = [r for r in results if r["peer"] in SQLITE_PEERS]
    _print_ratios(redis_results, "katana")
    _print_ratios(sqlite_results, "katana_sqlite")


def _print_ratios(results: list[dict[str, Any]], ours: str) -> None:
    katana = next((r for r in results if r["peer"] == ours and "error" not in r), None)
    peers = [r for r in results if r["peer"] != ours and "error" not in r]
    if katana is None or not peers:
        return
    print()
    for key, label in (
        ("enqueue_per_s", "enqueue/s (one producer)"),
        ("concurrent_per_s", f"enqueue/s @{common.CONCURRENT_PRODUCERS} producers"),
        ("bulk_per_s", "bulk enqueue/s"),
    ):
        rated = [r for r in peers if r.get(key)]
        if not katana.get(key) or not rated:
            continue
        best = max(rated, key=lambda r: float(r[key]))
        ratio = float(katana[key]) / float(best[key])
        print(f"{label}: {ours} {katana[key]:,.0f}, best peer {best['peer']} {best[key]:,.0f}: "
              f"{ratio:.2f}x")  # fmt: skip
    for drained in ("drain10", "drain100"):
        rated = [r for r in peers if _drain_rate(r, drained)]
        ours_rate = _drain_rate(katana, drained)
        if not ours_rate or not rated:
            continue
        best = max(rated, key=lambda r: _drain_rate(r, drained) or 0.0)
        best_rate = _drain_rate(best, drained) or 1.0
        print(f"{drained.replace('drain', 'drain/s @')}: {ours} {ours_rate:,.0f}, best peer "
              f"{best['peer']} {best_rate:,.0f}: {ours_rate / best_rate:.2f}x")  # fmt: skip


def _drain_rate(result: dict[str, Any], key: str) -> float | None:
    """Tasks per second of a drain, worker spawn to last task done; None if it did not end."""
    drained = result.get(key)
    if not drained or drained.get("timed_out") or not drained.get("seconds"):
        return None
    return float(drained["tasks"]) / float(drained["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--peers", default=",".join(ALL_PEERS), help=f"comma-separated, from {', '.join(ALL_PEERS)}"
    )
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--redis-url", default=common.DEFAULT_REDIS_URL)
    parser.add_argument("--json-out", type=Path, help="also write all results here")
    args = parser.parse_args()
    peers = [name.strip() for name in args.peers.split(",") if name.strip()]
    unknown = sorted(set(peers) - set(ALL_PEERS))
    if unknown:
        parser.error(f"unknown peers: {', '.join(unknown)}")
    common.check_redis_url(args.redis_url)
    server = redis_server(args.redis_url)
    other = OtherLoad(int(server["process_id"]))
    time.sleep(1.0)
    idle_other = other.since_mark()
    results = []
    for peer in peers:
        print(f"== {peer} ({interpreter(peer).parent.parent.name})", flush=True)
        result = run_peer(peer, args.redis_url, args.tasks)
        result["other_cpus"] = other.since_mark()
        results.append(result)
    print_report(results, args, server, idle_other)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))
    failed = [r["peer"] for r in results if "error" in r and not r.get("unavailable")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
