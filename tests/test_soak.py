"""bench/soak.py with a tiny count, so the soak script cannot rot (the real run: 100,000)."""

from __future__ import annotations

import re

from bench import soak


def test_soak_smoke(capsys):
    status = soak.main(["--db", "sqlite", "--count", "300", "--window", "16", "--time-limit", "60"])
    result = capsys.readouterr().out.strip().splitlines()[-1]
    assert status == 0, result
    fields = dict(re.findall(r"(\w+)=(\S+)", result))
    assert fields["crashes"] == "0" and fields["conserved"] == "yes" and fields["result"] == "OK"
    assert fields["status_server"] == "answered" and fields["valid_after"] == "answered"
    sent = re.search(r"sent=(\d+) \(valid=(\d+) fuzz=(\d+) garbage=(\d+)\)", result)
    lost = re.search(r"lost: valid=(\d+) fuzz=(\d+)", result)
    assert sent and int(sent[1]) == 300 and min(int(sent[2]), int(sent[3]), int(sent[4])) > 0, result
    assert lost and lost.groups() == ("0", "0"), result
