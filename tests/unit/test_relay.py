"""The launcher's relay of mpirun's output (launcher.relay): each rank's lines whole and
tagged "[RANK] " under every MPI, as they come (progress bars too), only the ranks asked for,
per-rank logs, and a console that goes away."""

import os
import subprocess
import sys

import pytest


def test_output_of_other_ranks_is_kept_out_of_the_console_only(tmp_path):
    """--output-ranks 0: rank 1's lines reach its log and, when it fails, the root cause."""
    code = "import os, sys; r = os.environ['OMPI_COMM_WORLD_RANK']; print('line from rank ' + r); sys.exit(int(r) * 5)"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--output-ranks", "0",
                           "--log-dir", str(tmp_path), "--no-env-defaults", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 5, proc.stderr
    assert "line from rank 0" in proc.stdout and "line from rank 1" not in proc.stdout + proc.stderr.split("mpirt:")[0]
    assert (tmp_path / "rank-1.log").read_text() == "line from rank 1\n"
    cause = proc.stderr[proc.stderr.index("mpirt: job failed"):]
    assert "rank 1 on " in cause and "exited with code 5 (sys.exit at <string>:1)" in cause
    assert "last output of rank 1:\n    line from rank 1" in cause


def test_timestamped_output_on_the_console_and_in_the_logs(tmp_path):
    import re

    code = "import os; print('hello from ' + os.environ['OMPI_COMM_WORLD_RANK'])"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--timestamp-output",
                           "--log-dir", str(tmp_path), "--no-env-defaults", "--", sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z "
    lines = [line for line in proc.stdout.splitlines() if "hello from" in line]
    assert sorted(re.sub(stamp, "", line) for line in lines) == ["[0] hello from 0", "[1] hello from 1"]
    assert all(re.match(stamp + r"\[\d\] ", line) for line in lines), lines
    assert re.fullmatch(stamp + "hello from 1\n", (tmp_path / "rank-1.log").read_text())


def test_output_ranks_are_checked():
    from launcher.relay import parse_ranks

    assert parse_ranks("all") is None and parse_ranks("0") == {0} and parse_ranks("0, 4-6") == {0, 4, 5, 6}
    for bad in ("", "x", "3-1", "1-", "-1", "0,,1"):
        with pytest.raises(ValueError, match="write all, or ranks and ranges such as 0 or 0,4-7"):
            parse_ranks(bad)


@pytest.mark.parametrize("np", [["-np", "2"], []])
def test_output_ranks_the_job_does_not_have_are_refused_before_it_runs(tmp_path, np):
    """--output-ranks naming no rank of the job would keep the console silent, as if hung."""
    marker = tmp_path / "ran"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", *np, "--output-ranks", "2-3",
                           "--no-env-defaults", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    span = "0-1" if np else "0"
    assert proc.returncode == 2 and f"--output-ranks 2-3 names none of this job's ranks ({span})" in proc.stderr
    assert not marker.exists() and [p.name for p in tmp_path.iterdir()] == [], proc.stderr


def test_pieces_of_lines_come_back_together_under_their_rank():
    """Open MPI 4 and Hydra tag every write: print() of several values, unbuffered, arrives in
    pieces, and two ranks' pieces can share a line (all as seen from their mpiruns here)."""
    from launcher.mpi import MpiImpl, rank_tag
    from launcher.relay import Lines

    ompi4, ompi5, hydra = (Lines(rank_tag(MpiImpl(family, version, "mpirun")))
                           for family, version in (("openmpi", (4, 1)), ("openmpi", (5, 0)), ("mpich", (4, 1))))
    assert ompi4.feed(b"[1,0]<stdout>:a[1,0]<stdout>: b c\n") == [(b"0", b"a b c\n")]
    assert ompi4.feed(b"[1,1]<stdout>:a[1,0]<stdout>:x\n") == [(b"0", b"x\n")]
    assert ompi4.feed(b"[1,1]<stdout>: b c\n") == [(b"1", b"a b c\n")] and not ompi4.pending
    assert ompi4.feed(b"mpirun noticed [1] nothing\n") == [(None, b"mpirun noticed [1] nothing\n")]
    assert ompi4.feed(b"[1,2]<stderr>:half") == [] and ompi4.unread == b"[1,2]<stderr>:half"  # may go on
    assert ompi4.feed(b"[1,2]<stderr>: more", now=5.0) == [] and ompi4.pending == {b"2": (b"half", 5.0)}
    assert ompi4.quiet() == [(b"2", b"half more\n")] and not ompi4.pending and not ompi4.unread
    assert ompi5.feed(b"[1,3]<stdout>:  two spaces\n") == [(b"3", b" two spaces\n")]
    assert hydra.feed(b"[mpirt:1]hello[mpirt:0] x[0] = 1\n") == [(b"0", b" x[0] = 1\n")]
    assert hydra.feed(b"[mpirt:1] 1\n") == [(b"1", b"hello 1\n")] and not hydra.pending
    assert Lines(None).feed(b"[1] text\n") == [(None, b"[1] text\n")]


@pytest.mark.parametrize("impl", [("openmpi", (4, 1)), ("openmpi", (5, 0)), ("mpich", (4, 1))])
def test_the_lines_are_the_same_however_mpiruns_output_is_cut_by_its_reads(impl):
    """A read can end anywhere: inside a tag, inside a piece, between a carriage return and
    its newline. Byte by byte, the lines are those of one read of everything."""
    from launcher.mpi import MpiImpl, rank_tag
    from launcher.relay import Lines

    def tag(rank: int) -> bytes:
        return {"openmpi": b"[1,%d]<stdout>:" if impl[1][0] == 4 else b"[1,%d]<stdout>: ",
                "mpich": b"[mpirt:%d]"}[impl[0]] % rank

    stream = (tag(0) + b"step" + tag(1) + b"a" + tag(0) + b" 3\n" + tag(1) + b" b\r\n" + b"mpirun: note\n" +
              tag(0) + b"\r  0%|" + tag(0) + b"\r 50%|#" + tag(1) + b"x[0] = 1\n" + tag(0) + b"\r100%|##\n" +
              tag(2) + b"ab\n" + tag(2) + b"cd" + tag(2) + b"ef\n" + tag(1) + b"no end")
    whole = Lines(rank_tag(MpiImpl(impl[0], impl[1], "mpirun")))
    expected = whole.feed(stream) + whole.quiet()
    assert expected == [(b"0", b"step 3\n"), (b"1", b"a b\r\n"), (None, b"mpirun: note\n"), (b"0", b"  0%|\r"),
                        (b"1", b"x[0] = 1\n"), (b"0", b" 50%|#\r"), (b"0", b"100%|##\n"), (b"2", b"ab\n"),
                        (b"2", b"cdef\n"), (b"1", b"no end\n")]
    bytewise = Lines(whole.tag)
    said = [line for i in range(len(stream)) for line in bytewise.feed(stream[i:i + 1])] + bytewise.quiet()
    assert said == expected


def test_a_progress_bar_and_a_line_without_its_end_show_while_they_happen():
    """tqdm redraws its bar after a carriage return and ends no line until it closes: each
    state ends at the next one's carriage return, and one left waiting IDLE_FLUSH_S shows
    then. Without that, a bar over an epoch showed nothing until the epoch ended."""
    from launcher.mpi import MpiImpl, rank_tag
    from launcher.relay import IDLE_FLUSH_S, Lines

    bar = Lines(rank_tag(MpiImpl("openmpi", (4, 1), "mpirun")))
    assert bar.feed(b"[1,0]<stderr>:\r  0%|     |", now=1.0) == []
    assert bar.feed(b"[1,0]<stderr>:\r 20%|#    |[1,0]<stderr>:\r 40%|##   |[1,1]<stdout>:x\n", now=1.2) == [
        (b"0", b"  0%|     |\r"), (b"0", b" 20%|#    |\r"), (b"1", b"x\n")]
    assert bar.due(now=1.2 + IDLE_FLUSH_S * 0.9) == []  # 40% has waited since 1.2
    assert bar.due(now=1.2 + IDLE_FLUSH_S) == [(b"0", b" 40%|##   |\n")] and not bar.pending
    assert bar.feed(b"[1,0]<stderr>:\r100%|#####|\n", now=3.0) == [(b"0", b"100%|#####|\n")]
    assert bar.feed(b"[1,0]<stderr>:\r 60%|###  |") == [] and bar.quiet() == [(b"0", b" 60%|###  |\n")]
    assert bar.feed(b"[1,0]<stderr>:\r 80%|#### |") == [] and bar.settle(now=4.0) == [] and bar.pending == {
        b"0": (b" 80%|#### |", 4.0)}
    text = Lines(None)
    assert text.feed(b"loading...", now=0.0) == [] and text.due(now=IDLE_FLUSH_S) == [(None, b"loading...\n")]
    assert text.feed(b"a\r\nb\r\n") == [(None, b"a\r\n"), (None, b"b\r\n")]


def test_a_rank_drawing_a_bar_shows_it_live_and_keeps_only_its_last_state(tmp_path):
    """Through the real relay (Open MPI 4, 2 ranks): the bar's states reach the console while
    rank 0 draws it (in 3 s), not all at its end; the last state, left waiting, shows after
    IDLE_FLUSH_S; the root cause keeps only the bar's last state."""
    import time

    bar = ("import os, sys, time\n"
           "if os.environ['OMPI_COMM_WORLD_RANK'] == '0':\n"
           "    for i in range(11):\n"
           "        sys.stderr.write(f'\\r{i * 10:3d}%|' + '#' * i); sys.stderr.flush(); time.sleep(0.3)\n"
           "    time.sleep(3)\n"
           "    sys.exit(3)\n")
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--no-env-defaults", "--",
                             sys.executable, "-c", bar], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    came, said, t0 = [], b"", time.monotonic()
    while chunk := os.read(proc.stderr.fileno(), 4096):
        came += [time.monotonic() - t0] * chunk.count(b"%|")
        said += chunk
    assert proc.wait(timeout=60) == 3
    states = said[:said.index(b"100%|")].split(b"\r")
    assert states == [f"[0] {i * 10:3d}%|{'#' * i}".encode() for i in range(10)] + [b"[0] "], said
    assert said[said.index(b"100%|"):].startswith(b"100%|##########\n"), said  # ended after IDLE_FLUSH_S
    assert came[9] - came[0] > 1.5 and came[10] - came[9] > 1.0, came  # as drawn, not all at the end
    cause = said.decode()[said.decode().index("mpirt: job failed"):].splitlines()
    assert cause[1:] == ["  last output of rank 0:", "    100%|##########"], cause




def test_a_console_that_goes_away_neither_stops_nor_blocks_the_job(tmp_path):
    """`mpirt launch ... | head -1`: the relay used to die on the broken pipe, mpirun then
    blocked on its full pipe and the job hung. Now the job runs to its end, every line in the
    rank's log."""
    # lines of 20 bytes and more: Open MPI 4.1's tagging drops shorter ones written in bulk
    flood = "import sys\nfor i in range(100000): sys.stdout.write(f'line {i:06d} of the flood\\n')\n"
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "launch", "-np", "2", "--no-env-defaults",
                             "--log-dir", str(tmp_path), "--", sys.executable, "-c", flood],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith(b"[")
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert b"mpirt: the console's reader went away; the job goes on" in err and b"Traceback" not in err, err
    for rank in (0, 1):
        assert (tmp_path / f"rank-{rank}.log").read_text().splitlines()[-1] == "line 099999 of the flood"


def test_ranks_drawing_for_a_terminal_are_told_its_width_less_their_tag():
    """A COLUMNS in the launcher's environment describes its terminal (GNU readline exports
    it): the ranks get it less their tag. One given with --env is the user's."""
    from launcher.launch import terminal_env

    assert terminal_env({}, {}, 8, 80) == {"MPIRT_PROGRESS": "bar", "COLUMNS": "75"}  # "[7] " and the cursor's column
    assert terminal_env({"COLUMNS": "80"}, {}, 1000, 120)["COLUMNS"] == "113"
    assert terminal_env({"MPIRT_PROGRESS": "lines"}, {"COLUMNS": "200"}, 2, 80) == {}  # what the user set stays
    assert terminal_env({}, {}, 2, 10)["COLUMNS"] == "20"


def test_a_log_that_cannot_be_written_is_said_once_and_the_relay_goes_on(tmp_path, capsys):
    import io

    from launcher.relay import Heard

    (tmp_path / "rank-1.log").mkdir()  # not a file: open() fails as on a full disk or too many open files
    heard = Heard(str(tmp_path), None, False, None, on_fatal=lambda: None)
    console = io.BytesIO()
    for n in range(3):
        heard.say(b"1", f"line {n}\n".encode(), console)
        heard.say(b"0", f"line {n}\n".encode(), console)
    heard.close()
    assert console.getvalue().count(b"[1] line") == 3 and list(heard.ranks["1"]) == ["line 0", "line 1", "line 2"]
    assert capsys.readouterr().err.count("rank-1.log (Is a directory); that output goes on to the console only") == 1
    assert (tmp_path / "rank-0.log").read_text() == "line 0\nline 1\nline 2\n"


def test_the_launcher_and_its_ranks_get_the_open_files_the_container_allows():
    """A soft limit of 1024 is too few for a log file per rank of a large job: raised to the
    hard limit, for mpirun and the ranks too."""
    import resource

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    code = "import resource; print('NOFILE', *resource.getrlimit(resource.RLIMIT_NOFILE))"
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "1", "--no-env-defaults", "--",
                           sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=low)
    assert proc.returncode == 0, proc.stderr
    assert "[0] NOFILE 4096 4096" in proc.stdout.splitlines(), proc.stdout
