"""HTTP load on the API with wrk (Debian's `wrk` package): requests per second and latency percentiles.

wrk is a C load generator, so at this machine's two cores it takes far less of the CPU the API needs
than a Python client would. A small Lua script cycles through the request paths (every stored id for
`GET /messages/{id}`) and prints wrk's own figures as one JSON line.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson

from streamd.bench.scratch import BenchError

WRK_SCRIPT = """\
local paths, count, index = {}, 0, 0

function init(args)
  for line in io.lines(args[1]) do
    count = count + 1
    paths[count] = line
  end
end

function request()
  index = index % count + 1
  return wrk.format("GET", paths[index])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "socket_errors": %d, "non_2xx": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

MISSING = "wrk is not installed (Debian: apt-get install wrk); the API load was not measured."


def wrk_path() -> str | None:
    return shutil.which("wrk")


def wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10)
    return (result.stdout or result.stderr).split(" [")[0].strip() or "wrk"


def load(wrk: str, port: int, paths: list[str], concurrency: int, seconds: float, directory: Path) -> dict:
    """One closed-loop wrk run: `concurrency` keep-alive connections for `seconds`."""
    directory.mkdir(parents=True, exist_ok=True)
    script, listing = directory / "bench.lua", directory / "paths.txt"
    script.write_text(WRK_SCRIPT)
    listing.write_text("\n".join(paths) + "\n")
    command = [
        wrk,
        "-t1",  # one thread drives every connection; more would only take CPU from the API
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(script),
        f"http://127.0.0.1:{port}",
        "--",
        str(listing),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise BenchError(f"wrk failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()[:300]}")
    figures = orjson.loads(lines[-1])
    seconds_run = figures["duration_us"] / 1e6
    return {
        "concurrency": concurrency,
        "requests": figures["requests"],
        "rps": round(figures["requests"] / seconds_run, 1),
        "p50_ms": round(figures["p50_us"] / 1000, 1),
        "p90_ms": round(figures["p90_us"] / 1000, 1),
        "p99_ms": round(figures["p99_us"] / 1000, 1),
        "max_ms": round(figures["max_us"] / 1000, 1),
        "errors": figures["socket_errors"] + figures["non_2xx"],
    }
