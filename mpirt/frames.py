"""Where a thread stands, for reports about a rank that does not progress: the innermost line
of the user's own code, and the library frame it is blocked in below that. Kept apart from
``mpirt.stall`` so it can be used and tested without MPI."""

from __future__ import annotations

import linecache
import os
import sysconfig
from pathlib import Path

# Frames in these directories are libraries (the standard library, site-packages, mpirt
# itself); the line to show is the innermost one outside them, the user's own.
_LIBRARY_DIRS = tuple(sorted({str(Path(d).resolve()) + os.sep for d in (
    sysconfig.get_path("stdlib"), sysconfig.get_path("platstdlib"), sysconfig.get_path("purelib"),
    sysconfig.get_path("platlib"), Path(__file__).parent) if d}))


def _frame_text(frame) -> str:
    code = frame.f_code
    source = linecache.getline(code.co_filename, frame.f_lineno).strip()
    return f"{code.co_filename}:{frame.f_lineno} in {code.co_name}" + (f": {source}" if source else "")


def locate(frame) -> tuple[str, str]:
    """Where the thread whose innermost frame is ``frame`` stands: (the innermost frame of user
    code, the innermost frame when the thread is deeper inside a library, such as a data loader
    or a collective, else ""). A thread entirely in library code gives that frame first."""
    innermost, user = frame, None
    while frame is not None and user is None:
        if not str(Path(frame.f_code.co_filename).resolve()).startswith(_LIBRARY_DIRS):
            user = frame
        frame = frame.f_back
    if user is None:
        return _frame_text(innermost), ""
    return _frame_text(user), ("" if user is innermost else _frame_text(innermost))
