"""Where each rank was when its job was stopped: real dumps of real processes, parsed."""

import fcntl
import os
import queue  # noqa: F401 - the script below blocks in it
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpirt.stacks import DUMP, END, Where, latest, parse, read_all, summary

SCRIPT = """import queue, threading, time
def loader(q):
    q.get()
def wait_for_data():
    time.sleep(600)
threading.Thread(target=loader, args=(queue.Queue(),), daemon=True).start()
print("ready", flush=True)
wait_for_data()
"""


def _run(tmp_path, rank: int, stop: bool, sig=signal.SIGTERM):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT if stop else "print('ready', flush=True)\n")
    env = {**os.environ, "MPIRT_ERROR_DIR": str(tmp_path / "errors"), "OMPI_COMM_WORLD_RANK": str(rank)}
    proc = subprocess.Popen([sys.executable, "-m", "mpirt", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    if stop:
        time.sleep(0.3)  # into the sleep
        proc.send_signal(sig)
    return proc.wait(timeout=30), script


@pytest.mark.parametrize("sig, ends", [(signal.SIGTERM, -signal.SIGTERM), (signal.SIGINT, 130)])
def test_a_stop_leaves_the_main_threads_place_and_still_ends_the_process(tmp_path, sig, ends):
    code, script = _run(tmp_path, 3, stop=True, sig=sig)
    assert code == ends  # the signal went on as before: SIGTERM kills, SIGINT raises KeyboardInterrupt (a stop)
    text = (tmp_path / "errors" / "rank-3.stacks").read_text()
    assert text.startswith("mpirt-stacks rank=3 host=") and "Thread 0x" in text
    [where] = parse(text)
    assert where.rank == 3 and where.inside == ""
    assert where.line == f"{script}:5 in wait_for_data"  # the main thread, not the loader thread


DEEP = """import time
def a_frame_with_a_long_name_so_that_the_dump_fills_more_than_one_pipe_buffer(n):
    if n:
        return a_frame_with_a_long_name_so_that_the_dump_fills_more_than_one_pipe_buffer(n - 1)
    print("ready", flush=True); time.sleep(600)  # one line: no race
a_frame_with_a_long_name_so_that_the_dump_fills_more_than_one_pipe_buffer(80)
"""


def test_a_second_sigterm_during_the_dump_waits_until_it_is_written(tmp_path):
    """Open MPI 4's mpirun sends its own SIGTERM as soon as another rank has died of ours. Here
    the dump goes into a pipe of one page that nobody reads yet, so the second SIGTERM surely
    comes in the middle of it (faulthandler's own chaining died there, half a dump written)."""
    errors = tmp_path / "errors"
    errors.mkdir()
    fifo = errors / "rank-0.stacks"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)
    script = tmp_path / "deep.py"
    script.write_text(DEEP)
    env = {**os.environ, "MPIRT_ERROR_DIR": str(errors), "OMPI_COMM_WORLD_RANK": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "mpirt", str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the dump is stuck on the full pipe
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # still writing
        os.set_blocking(reader, True)
        text = b"".join(iter(lambda: os.read(reader, 65536), b"")).decode()
        assert proc.wait(timeout=30) == -signal.SIGTERM  # then the signal did what it does
    finally:
        proc.kill()
        os.close(reader)
    assert len(text) > 3 * 4096
    [where] = parse(text)
    assert where.line == f"{script}:5 in a_frame_with_a_long_name_so_that_the_dump_fills_more_than_one_pipe_buffer"
    assert text.count("in a_frame_with_a_long_name") == 81  # every frame, down to the outermost,
    assert text.endswith("in _run_module_as_main\n" + END)  # and the mark that says it is whole


def test_the_dump_signal_alone_shows_a_live_rank_and_stops_nothing(tmp_path):
    script = tmp_path / "live.py"
    script.write_text("import sys\nprint('ready', flush=True); sys.stdin.readline()\n")  # one line: no race
    env = {**os.environ, "MPIRT_ERROR_DIR": str(tmp_path / "errors"), "OMPI_COMM_WORLD_RANK": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "mpirt", str(script)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(DUMP)
    dump = tmp_path / "errors" / "rank-2.stacks"
    deadline = time.monotonic() + 10
    while "Current thread" not in dump.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.stdin.write("go on\n")
    proc.stdin.close()
    assert proc.wait(timeout=30) == 0
    [where] = parse(dump.read_text())  # kept: it holds a dump
    assert where.line == f"{script}:2 in <module>"


def test_latest_keeps_a_files_header_and_its_last_whole_dump():
    head = "mpirt-stacks rank=1 host=w0 pid=9\n"
    one, two = "Current thread 0x01 (most recent call first):\n  File \"a.py\", line 1 in f\n", \
        "Current thread 0x01 (most recent call first):\n  File \"a.py\", line 2 in f\n"
    assert latest(head + one + END + two + END + "Current thread 0x01") == head + two + END
    assert latest(head + one) == "" and latest("") == ""


def test_a_source_tree_without_the_compiled_handler_still_runs_the_program(tmp_path):
    source = Path(__file__).parents[2]
    assert not list((source / "mpirt").glob("_stopdump*"))  # never built in place
    proc = subprocess.run([sys.executable, "-m", "mpirt", "-c", "print('ran')"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(source), "MPIRT_ERROR_DIR": str(tmp_path),
                                           "OMPI_COMM_WORLD_RANK": "1"})
    assert proc.returncode == 0 and proc.stdout == "ran\n", proc.stderr
    assert proc.stderr == ("mpirt: rank 1: warning: no stack dump if this rank is stopped: mpirt._stopdump is not "
                           "built here (pip install . builds it)\n")


def test_an_undisturbed_run_leaves_no_file(tmp_path):
    code, _ = _run(tmp_path, 0, stop=False)
    assert code == 0 and list((tmp_path / "errors").iterdir()) == []


def test_ranks_are_grouped_by_place_with_the_library_frame_they_wait_in(tmp_path):
    dump = """mpirt-stacks rank={r} host={h} pid=7
Thread 0x00007f01 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/app/data.py", line 9 in loader

Current thread 0x00007f00 (most recent call first):
  File "/usr/lib/python3.11/threading.py", line 320 in wait
  File "/usr/local/lib/python3.11/site-packages/torch/utils/data/dataloader.py", line 1100 in _next
  File "/app/train.py", line {line} in main
  File "<frozen runpy>", line 88 in _run_code
  File "/usr/local/lib/python3.11/site-packages/mpirt/__main__.py", line 40 in main
""" + END
    d = tmp_path
    for r, h, line in ((0, "w0", 40), (1, "w0", 40), (2, "w1", 40), (3, "w1", 52), (5, "w2", 40)):
        (d / f"rank-{r}.stacks").write_text(dump.format(r=r, h=h, line=line))
    # rank 1's second dump was cut short by a SIGKILL: its first counts
    with open(d / "rank-1.stacks", "a") as f:
        f.write("Current thread 0x00007f00 (most recent call first):\n  File \"/app/train.py\", line 99 in main\n")
    (d / "rank-4.stacks").write_text("mpirt-stacks rank=4 host=w2 pid=9\n")  # killed before it could dump
    (d / "rank-6.stacks").write_text(dump.format(r=6, h="w2", line=40).removesuffix(END))  # nor finish it
    wheres = read_all(d)
    assert [w.rank for w in wheres] == [0, 1, 2, 3, 5]
    assert wheres[3] == Where(3, "w1", "/app/train.py:52 in main", "/usr/lib/python3.11/threading.py:320 in wait")
    inside = " (inside /usr/lib/python3.11/threading.py:320 in wait)"
    assert summary(wheres + [Where(0, "w9", "elsewhere", "")]) == [
        "ranks 0-2, 5 (w0, w1, w2): /app/train.py:40 in main" + inside,
        "rank 3 (w1): /app/train.py:52 in main" + inside]
