"""``make demo``: the whole stack on loopback plays its month, stops what it started and exits 0.

The demo checks every outcome of its story itself (it fails when an email,
CoA or Disconnect does not arrive); these tests run it as ``make demo`` does
and look at what an operator would read.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time

from cli.lab import CAPCTL, PROJECT


def demo(directory, *options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli.demo", "--dir", str(directory), *options], cwd=PROJECT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def started_pids(output: str) -> list[int]:
    """FreeRADIUS's and cap-enforcer's PIDs, as the demo reports them."""
    pids = [int(pid) for pid in re.findall(r"\bpid (\d+)", output)]
    assert len(set(pids)) == 2, output
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_demo_plays_the_month_and_stops_everything(tmp_path):
    process = demo(tmp_path)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert 'mail     <- to alice@example.net: "80% of your data used"' in output
    assert ("CoA-Request for alice@isp (session 81a00001): Mikrotik-Rate-Limit = 5M/10M, "
            "answered CoA-ACK") in output
    assert "-10.00 Auto Top-Up 5 GB for Home internet" in output
    assert "Disconnect-Request for bob@isp (session 81a00002), answered Disconnect-ACK" in output
    assert 'redials: Access-Reject, Reply-Message "Your data cap is reached.' in output
    assert re.search(r"dave@isp +downloads games at night +\[####-+\] +2 GB of 10 GB +bonus 3 GB +ok", output)
    assert "$ capctl topup add alice@isp --plan 5GB" in output
    assert "Mikrotik-Rate-Limit = 10M/20M, answered CoA-ACK" in output
    assert re.search(r"dave@isp +ok +available: monthly 10 GB, rollover 8 GB", output)
    assert not [pid for pid in started_pids(output) if alive(pid)]


def test_keep_leaves_the_stack_to_capctl_until_sigterm(tmp_path):
    process = demo(tmp_path, "--keep")
    lines: queue.Queue[str] = queue.Queue()
    seen: list[str] = []
    reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True)
    reader.start()

    def read_until(pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=0.5))
            except queue.Empty:
                continue
            found = re.search(pattern, seen[-1])
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r} within {timeout} s:\n" + "".join(seen))

    try:
        read_until(r"The stack keeps running", timeout=120)
        topup = read_until(r"capctl topup remove alice@isp (\d+)", timeout=5).group(1)
        environment = dict(os.environ, RLM_CAP_DB_URL=f"sqlite:///{tmp_path / 'demo.sqlite3'}")
        removed = subprocess.run([CAPCTL, "topup", "remove", "alice@isp", topup], env=environment,
                                 capture_output=True, text=True, timeout=30)
        assert removed.returncode == 0, removed.stderr
        read_until(r"CoA-Request for alice@isp .*Mikrotik-Rate-Limit = 5M/10M", timeout=20)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    reader.join(10)
    output = "".join(seen + list(lines.queue))
    assert process.returncode == 0, output
    assert "Stopped:" in output
    assert not [pid for pid in started_pids(output) if alive(pid)]
