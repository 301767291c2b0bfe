"""A rank's output after its stop signal: diverted to the error directory, then shown by rank."""

import os
import subprocess
import sys

from mpirt import divert

CHILD = """
import os, sys
from mpirt.divert import divert
print("before", flush=True)
divert(3, sys.argv[1] or None)
print("after", flush=True)
print("oops", file=sys.stderr, flush=True)
"""


def test_divert_moves_stdout_and_stderr_to_the_ranks_file(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, check=True)
    assert (proc.stdout, proc.stderr) == ("before\n", "")
    text = (tmp_path / "rank-3.out").read_text()
    assert text.startswith("mpirt-output rank=3 host=") and text.endswith("\nafter\noops\n")


def test_without_an_error_directory_nothing_changes(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, ""], capture_output=True, text=True, check=True,
                          env={k: v for k, v in os.environ.items() if k != "MPIRT_ERROR_DIR"}, cwd=tmp_path)
    assert (proc.stdout, proc.stderr) == ("before\nafter\n", "oops\n")
    assert list(tmp_path.iterdir()) == []


def test_summary_keeps_each_ranks_last_lines_in_rank_order():
    many = "".join(f"line {i}\n" for i in range(divert.KEEP + 5))
    text = ("mpirt-output rank=2 host=w1\nlast words\n\n" + "mpirt-output rank=0 host=w0\n" + many +
            "mpirt-output rank=2 host=w1\nsecond stop\n")
    out = divert.summary(text)
    assert out[:2] == ["  [rank 0 w0] line 5", "  [rank 0 w0] line 6"]
    assert len([x for x in out if "[rank 0 w0]" in x]) == divert.KEEP
    assert out[-2:] == ["  [rank 2 w1] last words", "  [rank 2 w1] second stop"]
    assert divert.summary("") == []
