"""Rank output as whole lines. Under mpirun a rank's stdout is unbuffered (write-through), and
the relay tags every write it reads separately, so ``print`` (text, then newline: two writes)
leaves a stray tag; one write per line keeps tagged output readable."""

from __future__ import annotations

import sys


def say(text: str, err: bool = False) -> None:
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


def ranges(numbers: list[int]) -> list[str]:
    """Sorted integers as runs, for people: [0, 1, 2, 5] -> ["0-2", "5"] (a cpulist, a set of ranks)."""
    runs, start = [], None
    for i, n in enumerate(numbers):
        if start is None:
            start = n
        if i + 1 == len(numbers) or numbers[i + 1] != n + 1:
            runs.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return runs
