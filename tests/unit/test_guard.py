"""launcher.guard: which command lines are Python programs, and what they become."""

import os
import subprocess
import sys

import pytest

from launcher.guard import guarded, has_mpirt, split

YES = lambda python: True  # noqa: E731 - an interpreter that has mpirt


@pytest.mark.parametrize("command,expected", [
    (["python", "train.py", "--lr", "0.1"], ["python", "-m", "mpirt", "train.py", "--lr", "0.1"]),
    (["python3.11", "-m", "pkg.train", "-x"], ["python3.11", "-m", "mpirt", "-m", "pkg.train", "-x"]),
    (["/opt/venv/bin/python3", "-c", "print(1)"], ["/opt/venv/bin/python3", "-m", "mpirt", "-c", "print(1)"]),
    (["python", "-u", "-X", "faulthandler", "-Wignore", "-OO", "t.py"],
     ["python", "-u", "-X", "faulthandler", "-Wignore", "-OO", "-m", "mpirt", "t.py"]),
    (["python", "-uB", "t.py", "-m", "x"], ["python", "-uB", "-m", "mpirt", "t.py", "-m", "x"]),
])
def test_a_python_program_runs_under_python_m_mpirt(command, expected):
    assert guarded(command, YES) == expected


@pytest.mark.parametrize("command", [
    ["python", "-m", "mpirt", "train.py"], ["python", "-P", "-m", "mpirt.bench.train"],  # already, mpirt's own
    ["mpirt", "train", "--steps", "5"],  # not Python
    ["./train.sh"], ["pythonic", "x.py"], ["python"],  # another program; an interactive Python
    ["python", "-u"], ["python", "-m"], ["python", "--version"], ["python", "-", "x"],  # nothing to run, or unknown
])
def test_anything_else_runs_as_given(command):
    assert guarded(command, YES) == command
    assert split(command) is None or "-m" in command


def test_a_python_without_mpirt_runs_as_given(tmp_path, monkeypatch):
    assert guarded(["python", "t.py"], lambda python: False) == ["python", "t.py"]
    monkeypatch.chdir(tmp_path)  # not a checkout, whose mpirt/ any Python started there would import
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    assert not has_mpirt(str(tmp_path / "venv" / "bin" / "python"), None)
    assert has_mpirt("python", str(tmp_path / "venv" / "bin") + os.pathsep + os.path.dirname(sys.executable)) is False
    assert has_mpirt(sys.executable, None)
    assert not has_mpirt("true", None)  # a program that is no Python, and one that is not there
    assert not has_mpirt("no-such-python", None)
