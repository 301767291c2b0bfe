"""A Python program given to `mpirt launch` runs under ``python -m mpirt``.

``mpirt launch -np 4 -- python train.py`` is what a user who does not know MPI writes. Under
``python -m mpirt`` the same ranks stop the whole job when one raises (with the error record
the root cause is read from), leave their stacks when the job is stopped or hangs, and see
torchrun's RANK, WORLD_SIZE and LOCAL_RANK, so a script written for torchrun runs unchanged.
Only where that Python has mpirt: without it the command runs as given, as it always did.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys

_PYTHON = re.compile(r"python(\d+(\.\d+)*)?")
_FLAGS = set("bBdEiIOPqsSuvx")  # python's one-letter options that take no value (-uB is two)
_CHECK = "import importlib.util as u; print('mpirt', u.find_spec('mpirt') is not None)"


def split(command: list[str]) -> tuple[list[str], list[str]] | None:
    """(the interpreter and its options, ``SCRIPT|-m MODULE|-c CODE`` and its arguments) of a
    Python command line; None for anything else (another program, an interactive Python, an
    option this does not know)."""
    if not command or not _PYTHON.fullmatch(os.path.basename(command[0])):
        return None
    i = 1
    while i < len(command):
        word = command[i]
        if word in ("-W", "-X"):
            i += 2
        elif word.startswith(("-W", "-X")) or (word.startswith("-") and len(word) > 1 and set(word[1:]) <= _FLAGS):
            i += 1
        elif word in ("-m", "-c"):
            return (command[:i], command[i:]) if i + 1 < len(command) else None
        elif word.startswith("-"):
            return None
        else:
            return command[:i], command[i:]
    return None


def guarded(command: list[str], has_mpirt) -> list[str]:
    """``command`` with ``-m mpirt`` before its program where it is a Python command line
    whose interpreter ``has_mpirt(interpreter)`` and not mpirt's own; else ``command`` as it is."""
    parts = split(command)
    if parts is None or _ours(parts[1]) or not has_mpirt(parts[0][0]):
        return command
    return [*parts[0], "-m", "mpirt", *parts[1]]


def _ours(program: list[str]) -> bool:
    """``-m mpirt`` already, or a module of mpirt's (``mpirt.bench.train``): each sees to itself."""
    return program[0] == "-m" and (program[1] == "mpirt" or program[1].startswith("mpirt."))


@functools.cache
def has_mpirt(python: str, path: str | None) -> bool:
    """Whether ``python`` (found through the ranks' PATH) imports mpirt: this launcher's own
    interpreter does; another is asked (an MPI's venv, a base image's system Python)."""
    found = shutil.which(python, path=path)
    if found is None:
        return False
    if os.path.abspath(found) == os.path.abspath(sys.executable):
        return True
    try:
        said = subprocess.run([found, "-c", _CHECK], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return said.strip() == "mpirt True"
