"""Rank output as whole lines. Under mpirun a rank's stdout is unbuffered (write-through), and
the relay tags every write it reads separately, so ``print`` (text, then newline: two writes)
leaves a stray tag; one write per line keeps tagged output readable."""

from __future__ import annotations

import sys


def say(text: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()
