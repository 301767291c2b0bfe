"""Where a stalled rank stands: the user's own line, and the library frame it is blocked in."""

import queue
import sys
import threading
import time

from mpirt.frames import locate


def _blocked_thread():
    q, started = queue.Queue(), threading.Event()

    def wait_for_batch():
        started.set()
        q.get()  # the line a stall report must point at

    t = threading.Thread(target=wait_for_batch, daemon=True)
    t.start()
    started.wait()
    time.sleep(0.1)  # into q.get()
    return t, q


def test_the_user_line_comes_first_then_the_library_frame_it_waits_in():
    t, q = _blocked_thread()
    try:
        user, inside = locate(sys._current_frames()[t.ident])
    finally:
        q.put(None)
        t.join()
    assert user.startswith(f"{__file__}:") and user.endswith(" in wait_for_batch: q.get()  "
                                                               "# the line a stall report must point at")
    assert "threading.py:" in inside and " in wait" in inside


def test_a_thread_in_user_code_shows_just_that_line():
    here = sys._getframe()
    line = here.f_lineno + 1
    user, inside = locate(here)
    assert inside == ""
    assert user == (f"{__file__}:{line} in test_a_thread_in_user_code_shows_just_that_line: "
                    "user, inside = locate(here)")

