"""bench/ still runs: every benchmark on a tiny count (measures nothing; keeps the scripts from rotting)."""

from __future__ import annotations

import os

import pytest

from bench import run

from .conftest import new_mariadb_database


@pytest.fixture
def bench_db():
    with new_mariadb_database(f"rlm_cap_test_{os.getpid()}_bench") as url:
        yield url


def test_every_benchmark_runs_on_a_tiny_count_with_exact_totals(bench_db, tmp_path, capsys):
    output = tmp_path / "BENCHMARKS.md"
    assert run.main(["--quick", "--db", bench_db, "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    for path in ("rlm_cap-journal", "rlm_cap-sync", "rlm_sql", "ok", "python-noop"):
        assert f"| {path} |" in printed
    assert "### P2" in printed and "3 CoA for 3 crossings" in printed
    assert "### P3" in printed and "a second pass found 0 due" in printed
    assert not output.exists()  # a quick run measures nothing worth keeping


def test_results_replace_only_the_marked_part_of_benchmarks_md(tmp_path):
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# Benchmarks\n\nprose before\n\n{run.BEGIN}\nold table\n{run.END}\n\nprose after\n")
    run.write(markdown, f"{run.BEGIN}\nnew table\n{run.END}")
    assert markdown.read_text() == f"# Benchmarks\n\nprose before\n\n{run.BEGIN}\nnew table\n{run.END}\n\nprose after\n"
