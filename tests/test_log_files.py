"""Per-process log files and `streamd logs`: written by each child, rotated by size, read back and followed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .probes import REPO, wait_until
from .supervisor_process import start_streamd
from .test_supervisor import run_streamd

WRITER = textwrap.dedent(
    """
    import logging, sys
    from pathlib import Path
    from streamd import config, logs
    settings = config.from_mapping({"logging": {"file_max_bytes": %d, "file_count": %d}})
    logs.configure(settings.logging, sys.argv[1], Path(sys.argv[2]))
    for number in range(int(sys.argv[3]), int(sys.argv[4])):
        logging.getLogger("streamd.test").info("line %%06d " + "x" * 40, number)
    """
)


def write_lines(directory: Path, name: str, first: int, last: int, max_bytes: int = 2000, count: int = 3) -> None:
    """Log lines first..last-1 from a process of their own, through streamd's logging setup."""
    script = WRITER % (max_bytes, count)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", script, name, str(directory), str(first), str(last)], check=True, env=env)


def config_for(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    return path


def numbers(text: str) -> list[int]:
    return [int(line.split("line ", 1)[1].split()[0]) for line in text.splitlines() if "line " in line]


def test_rotation_keeps_count_files_of_at_most_about_the_size(tmp_path):
    directory = tmp_path / "state" / "logs"
    write_lines(directory, "consumer-1", 0, 500, max_bytes=2000, count=3)
    files = sorted(path.name for path in directory.iterdir())
    assert files == ["consumer-1.log", "consumer-1.log.1", "consumer-1.log.2"]
    assert all((directory / name).stat().st_size <= 2000 for name in files)
    # The newest lines survive, in order, ending with the last one written.
    result = run_streamd("logs", "consumer-1", "-n", "10", "-c", str(config_for(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert numbers(result.stdout) == list(range(490, 500))


def test_logs_reads_across_rotated_files_when_the_current_one_holds_fewer_lines(tmp_path):
    directory = tmp_path / "state" / "logs"
    write_lines(directory, "producer", 0, 100, max_bytes=2000, count=4)
    result = run_streamd("logs", "producer", "-n", "40", "-c", str(config_for(tmp_path)))
    assert numbers(result.stdout) == list(range(60, 100))


def test_logs_without_a_child_interleaves_every_file_by_time(tmp_path):
    directory = tmp_path / "state" / "logs"
    (directory).mkdir(parents=True)
    (directory / "producer.log").write_text(
        "2026-01-01 10:00:00 INFO    [producer] line 000001\n2026-01-01 10:00:02 INFO    [producer] line 000003\n"
    )
    (directory / "consumer-1.log").write_text(
        "2026-01-01 10:00:01 ERROR   [consumer-1] line 000002\nTraceback (most recent call last):\n  boom\n"
        "2026-01-01 10:00:03 INFO    [consumer-1] line 000004\n"
    )
    result = run_streamd("logs", "-c", str(config_for(tmp_path)))
    assert numbers(result.stdout) == [1, 2, 3, 4]
    assert "Traceback" in result.stdout.splitlines()[2], "a traceback stays with its line"
    last_two = run_streamd("logs", "-n", "2", "-c", str(config_for(tmp_path)))
    assert numbers(last_two.stdout) == [3, 4]


def test_logs_of_a_child_without_a_file_names_the_files_there_are(tmp_path):
    write_lines(tmp_path / "state" / "logs", "producer", 0, 1)
    result = run_streamd("logs", "consumer-7", "-c", str(config_for(tmp_path)))
    assert result.returncode == 1
    assert "consumer-7" in result.stderr and "producer" in result.stderr


def test_logs_follow_sees_new_lines_across_rotation(tmp_path):
    directory = tmp_path / "state" / "logs"
    write_lines(directory, "consumer-1", 0, 5)
    command = [sys.executable, "-m", "streamd", "logs", "-f", "-n", "1", "consumer-1", "-c", str(config_for(tmp_path))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = tmp_path / "follow.out"
    with open(out, "w") as sink:
        follower = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until(lambda: numbers(out.read_text()) == [4], what="the last line printed first")
        # 40 lines of ~90 bytes rotate the 2000-byte file at least once while the follower polls.
        write_lines(directory, "consumer-1", 5, 45)
        wait_until(lambda: numbers(out.read_text())[-1:] == [44], what="the follower reaching the newest line")
        assert numbers(out.read_text()) == list(range(4, 45)), "no line lost or repeated across rotation"
    finally:
        follower.terminate()
        follower.wait(10)


def test_each_child_of_a_real_supervisor_writes_its_own_file(tmp_path, pipeline_config):
    sup = start_streamd(tmp_path, pipeline_config)
    try:
        sup.wait_running("producer", "consumer-1", "api", timeout=60)
        directory = pipeline_config.state_path / "logs"

        def tagged(name: str) -> bool:
            path = directory / f"{name}.log"
            return path.exists() and any(f"[{name}]" in line for line in path.read_text().splitlines())

        for name in ("supervisor", "producer", "consumer-1", "api"):
            wait_until(lambda name=name: tagged(name), what=f"{name}'s lines in {name}.log")
        assert (directory / "api-worker-1.log").exists(), "a Gunicorn worker has a file of its own"
        own = (directory / "consumer-1.log").read_text().splitlines()
        assert all("[consumer-1]" in line for line in own if line[:4].isdigit()), "a file holds its process's lines"
        result = run_streamd("logs", "consumer-1", "-n", "2", "-c", str(sup.config_path))
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == own[-2:]
    finally:
        sup.kill()
