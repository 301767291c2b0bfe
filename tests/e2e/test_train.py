"""`mpirt launch ... -- mpirt train` end to end: the README job, N ranks equal one rank,
kill-and-resume equals an uninterrupted run, SIGTERM checkpoints and exits 143."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mpirt import checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.mpi]


def train(np_, out, *args, timeout=240):
    cmd = ["mpirt", "launch", "-np", str(np_), "--", "mpirt", "train", "--out", str(out), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def final_weights(out):
    step, state = checkpoint.load_latest(out / "checkpoints")
    return step, state["model"]


@pytest.mark.parametrize("model, extra", [("mlp", ()), ("transformer", ()),
                                          ("mlp", ("--compression", "powersgd", "--powersgd-start", "5")),
                                          ("cnn", ("--verify-every", "10"))],
                         ids=["mlp", "transformer", "mlp-powersgd", "cnn"])
def test_readme_job_loss_falls(tmp_path, model, extra):
    """cnn: BatchNorm's statistics differ by shard, so --verify-every (replicas bitwise equal,
    buffers included) holds only because every rank takes rank 0's after each step."""
    proc = train(2, tmp_path, "--model", model, "--steps", {"mlp": "100", "cnn": "60"}.get(model, "40"),
                 "--log-every", "20", *extra)
    assert "on 2 ranks / 1 node" in proc.stdout
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))
    first, last = records[0]["loss"], sum(r["loss"] for r in records[-5:]) / 5
    assert last < 0.8 * first, f"loss did not fall: {first} -> {last}"
    assert all(r["samples_per_s"] > 0 and 0 <= r["overlap"] <= 1 for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["steps"] == len(records)
    assert summary["algo"] == "core"  # auto: the core on CPU, its buckets shared unless PowerSGD's
    shared = "powersgd" not in extra
    assert summary["shared_buckets"] is shared
    assert summary["bucket_mb"] == (2.0 if shared else 25.0)  # the measured CPU default; PowerSGD's own
    assert f"(cpu, algo core{', shared buckets' if shared else ''})" in proc.stdout


SAME = ["--optimizer", "sgd", "--lr", "0.05", "--steps", "6", "--batch-size", "24", "--samples", "240",
        "--checkpoint-every", "0", "--verify-every", "1", "--bucket-mb", "0.02"]


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    out = tmp_path_factory.mktemp("np1")
    train(1, out, *SAME)
    return final_weights(out)


def assert_weights_of_one_rank(out, one_rank, rtol=1e-5, atol=1e-6):
    """The job in ``out`` ended at one rank's step and weights (fp32, another summation order:
    a few ulps per step by default)."""
    step, weights = final_weights(out)
    assert step == one_rank[0] == 6
    for name, w in weights.items():
        assert torch.allclose(w, one_rank[1][name], rtol=rtol, atol=atol), name


def test_the_readme_job_on_a_terminal_draws_its_progress_bar_in_place(tmp_path):
    """`mpirt launch` on an 80-column terminal asks the ranks for the bar (MPIRT_PROGRESS=bar)
    no wider than what is left after the tag (COLUMNS), and its relay passes each redraw on as
    it comes, tagged after every carriage return."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen(["mpirt", "launch", "-np", "2", "--", "mpirt", "train", "--model", "mlp", "--steps",
                             "40", "--out", str(tmp_path)], stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the launcher has exited and closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    bars = [b.split(b"\n")[0] for b in shown.split(b"\r") if b.startswith(b"[0] [#")]
    assert len(bars) >= 30 and b"step     40/40" in bars[-1], shown  # a state per step, the last one whole
    assert max(len(b) for b in bars) < 80, bars  # none wraps
    assert b"[1] " not in shown, shown  # only rank 0 draws


@pytest.mark.parametrize("np_", [2, 4])
def test_n_ranks_give_the_weights_of_one_rank(tmp_path, one_rank, np_):
    train(np_, tmp_path, *SAME)
    assert_weights_of_one_rank(tmp_path, one_rank)


def test_accumulated_backward_passes_give_the_weights_of_one_rank(tmp_path, one_rank):
    """--accumulate 5: 24 rows on 2 ranks, 12 each in parts of 3, 3, 2, 2, 2, averaged once a step."""
    proc = train(2, tmp_path, *SAME, "--accumulate", "5")
    assert "global batch 24 in 5 backward passes" in proc.stdout
    assert_weights_of_one_rank(tmp_path, one_rank)


def test_a_job_compiled_split_at_its_buckets_gives_the_weights_of_one_rank(tmp_path, one_rank):
    proc = train(2, tmp_path, *SAME, "--compile", "split")
    assert "compiled split)" in proc.stdout
    assert_weights_of_one_rank(tmp_path, one_rank, rtol=1e-4, atol=1e-5)  # inductor rounds unlike eager


def test_a_job_resumed_on_fewer_ranks_continues_the_same_training(tmp_path, one_rank):
    """Elastic in the MPIJob sense: a job suspended (or cut short) at 4 workers resumes at 2 from
    its checkpoint. The sampler's position is global and the batch is global, so the run ends
    with the weights of one rank that never stopped."""
    train(4, tmp_path, *SAME, "--steps", "3")
    proc = train(2, tmp_path, *SAME, "--resume")
    assert "resuming from step 3" in proc.stdout
    assert "checkpoint was written by 4 ranks, this run has 2: RNG states are not restored" in proc.stderr
    assert_weights_of_one_rank(tmp_path, one_rank)


def descendants(pid):
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


RESUME = ["--steps", "20", "--hidden", "1024", "--layers", "4", "--batch-size", "256", "--checkpoint-every", "1",
          "--keep", "30", "--log-every", "1"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    full = tmp_path_factory.mktemp("full")
    train(2, full, *RESUME)
    return final_weights(full)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, uninterrupted):
    cut = tmp_path / "cut"
    proc = subprocess.Popen(["mpirt", "launch", "-np", "2", "--", "mpirt", "train", "--out", str(cut), *RESUME],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and 10 not in checkpoint.list_steps(cut / "checkpoints"):
        time.sleep(0.02)
    tree = [proc.pid, *descendants(proc.pid)]  # launcher, mpirun and both ranks, at once
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    reached = checkpoint.list_steps(cut / "checkpoints")
    assert 10 in reached and max(reached) < 20, f"not interrupted mid-run: {reached}"
    out = train(2, cut, *RESUME, "--resume")
    assert f"resuming from step {max(reached)}" in out.stdout
    (s1, w1), (s2, w2) = uninterrupted, final_weights(cut)
    assert s1 == s2 == 20
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name


def test_a_rank_killed_mid_run_is_restarted_and_resumes_to_the_same_weights(tmp_path, uninterrupted):
    """--max-restarts: the launcher runs the job again; `mpirt train` sees MPIRT_RESTART and resumes."""
    proc = subprocess.Popen(["mpirt", "launch", "-np", "2", "--max-restarts", "1", "--", "mpirt", "train", "--out",
                             str(tmp_path), *RESUME], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and 10 not in checkpoint.list_steps(tmp_path / "checkpoints"):
        time.sleep(0.02)
    ranks = [pid for pid in descendants(proc.pid)
             if b"train" in (cmd := open(f"/proc/{pid}/cmdline", "rb").read()) and b"mpirun" not in cmd]
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)  # one rank, as the OOM killer or a lost pod would
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert "was killed by signal 9 (SIGKILL)" in err and "attempt 1 of 2 failed; restarting the job" in err
    resumed = int(out.split("resuming from step ", 1)[1].split()[0])
    assert 10 <= resumed < 20
    (s1, w1), (s2, w2) = uninterrupted, final_weights(tmp_path)
    assert s1 == s2 == 20
    for name in w1:
        assert torch.equal(w1[name], w2[name]), name


RESTART_PROBE = """import os, sys
from mpi4py import MPI
n = os.environ["MPIRT_RESTART"]
assert os.environ["TORCHELASTIC_RESTART_COUNT"] == n
sys.stdout.write(f"attempt {n} rank {MPI.COMM_WORLD.rank}\\n")  # one write: one tagged line
sys.stdout.flush()
if MPI.COMM_WORLD.rank == 1 and int(n) < int(sys.argv[1]):
    raise RuntimeError("attempt " + n + " fails")
"""


def test_restarts_until_success_or_the_limit(tmp_path):
    script = tmp_path / "flaky.py"
    script.write_text(RESTART_PROBE)
    message = tmp_path / "termination-log"

    def launch(restarts, fail_until):
        return subprocess.run(["mpirt", "launch", "-np", "2", "--max-restarts", str(restarts), "--termination-log",
                               str(message), "--", sys.executable, "-m", "mpirt", str(script), str(fail_until)],
                              capture_output=True, text=True, timeout=180)

    ok = launch(3, 2)  # attempts 0 and 1 fail, 2 succeeds, 3 is not needed
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.count("restarting the job") == 2 and "attempt 2 of 4 failed" in ok.stderr
    assert "attempt 2 rank 1" in ok.stdout and "attempt 3" not in ok.stdout
    assert message.read_text() == "mpirt: job succeeded (mpirun exited 0)\n"
    out_of_tries = launch(1, 5)
    assert out_of_tries.returncode != 0 and out_of_tries.stderr.count("restarting the job") == 1
    last = message.read_text()
    assert "Root cause (first failure): rank 1 on " in last and "RuntimeError: attempt 1 fails" in last
    # the time limit is a decision, not a failure: never restarted
    limited = subprocess.run(["mpirt", "launch", "-np", "2", "--max-restarts", "2", "--time-limit", "3", "--grace",
                              "2", "--", sys.executable, "-c", "import time; time.sleep(60)"],
                             capture_output=True, text=True, timeout=60)
    assert limited.returncode == 124 and "restarting" not in limited.stderr, limited.stderr


def test_resume_skips_a_torn_newest_checkpoint(tmp_path):
    train(1, tmp_path, "--steps", "4", "--checkpoint-every", "2")
    newest = checkpoint.path_for(tmp_path / "checkpoints", 4)
    newest.write_bytes(newest.read_bytes()[:100])
    out = train(1, tmp_path, "--steps", "6", "--checkpoint-every", "2", "--resume")
    assert "skipping checkpoint" in out.stdout + out.stderr and "resuming from step 2" in out.stdout


def test_sigterm_to_the_launcher_checkpoints_and_exits_143(tmp_path):
    proc = subprocess.Popen(["mpirt", "launch", "-np", "2", "--grace", "6", "--", "mpirt", "train", "--out",
                             str(tmp_path), "--steps", "100000", "--checkpoint-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    metrics = tmp_path / "metrics.jsonl"
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "stopped by signal after step" in err and "mpirt: stopped by SIGTERM" in err
    step, state = checkpoint.load_latest(tmp_path / "checkpoints")
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert step == state["step"] == last_logged >= 5


@pytest.mark.parametrize("option, value, message", [
    ("--steps", "0", "--steps must be at least 1 (got 0)"),
    ("--bucket-mb", "0", "Invalid value for '--bucket-mb': 0.0 is not in the range x>0."),
    ("--first-bucket-mb", "-1", "Invalid value for '--first-bucket-mb': -1.0 is not in the range x>0.")])
def test_bad_option_is_a_clear_error(tmp_path, option, value, message):
    proc = subprocess.run(["mpirt", "train", option, value, "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_an_out_directory_that_cannot_be_made_is_the_root_cause(tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    proc = subprocess.run(["mpirt", "launch", "-np", "2", "--", "mpirt", "train", "--steps", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Root cause (first failure): rank 0 on " in proc.stderr
    assert f"ValueError: --out {out}: cannot make it (Not a directory); give a writable directory on rank 0's " \
           "host" in proc.stderr, proc.stderr
    assert "loss" not in proc.stdout  # before any training


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: tests/mpi/test_gpu.py trains on it")
def test_cuda_asked_for_where_there_is_none_is_refused_before_training(tmp_path):
    proc = subprocess.run(["mpirt", "train", "--device", "cuda", "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "--device cuda: torch sees no CUDA device here; use --device cpu (or auto)" in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_time_limit_stops_the_job_as_sigterm_does_and_exits_124(tmp_path):
    """Past --time-limit the ranks get SIGTERM (and checkpoint) before the kill; the launcher says why."""
    message = tmp_path / "termination-log"
    t0 = time.time()
    proc = subprocess.run(["mpirt", "launch", "-np", "2", "--grace", "6", "--time-limit", "8", "--termination-log",
                           str(message), "--", "mpirt", "train", "--out", str(tmp_path), "--steps", "100000",
                           "--checkpoint-every", "0"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 124, proc.stderr
    assert time.time() - t0 < 8 + 6 + 30
    assert "mpirt: time limit of 8 s reached; stopping the job" in proc.stderr
    assert "stopped by signal after step" in proc.stderr  # the ranks saw SIGTERM, not a kill
    assert message.read_text().startswith("mpirt: job stopped: it ran past its time limit (--time-limit 8 s)")
    step, state = checkpoint.load_latest(tmp_path / "checkpoints")
    assert step == state["step"] >= 1


@pytest.mark.parametrize("np_", [4])  # 2 ranks: tests/e2e/test_examples.py, stopped by SIGTERM
def test_a_script_of_ones_own_checkpoints_at_the_time_limit_with_mpirt_stop(tmp_path, np_):
    """A loop of the user's own with mpirt.stop.Stop: --time-limit signals every rank wherever it
    is; all stop after one agreed step, rank 0 checkpoints it while the others wait (no kill at
    the end of --grace), and each rank's last words, printed after the signal while mpirun
    relays nothing, come back in the launcher's report."""
    script = Path(__file__).parents[1] / "mpi" / "ranks" / "stop_agreed.py"
    t0 = time.time()
    proc = subprocess.run(["mpirt", "launch", "-np", str(np_), "--grace", "30", "--time-limit", "8", "--",
                           sys.executable, "-m", "mpirt", str(script), "none", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 124, proc.stderr
    assert time.time() - t0 < 8 + 30, "the ranks were killed at the end of the grace period"
    step, state = checkpoint.load_latest(tmp_path)
    assert step == state["step"] > 1
    said = proc.stdout + proc.stderr
    for r in range(np_):
        assert f"rank {r} stopped after step {step} by signal 15" in said, said[-3000:]


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_a_scripts_torch_threads_share_the_hosts_cpus(np_):
    """A script of one's own sets no threads. Left alone, torch's MKL builds start 1 thread a
    rank under MPI (they see Open MPI's rank variables: a rank alone on 2 cores got 1), others
    one per core they see however many ranks share them. mpirt launch gives each rank its share
    of the CPUs the host allows (OMP_NUM_THREADS), which torch follows; the user's value stands."""
    from launcher.detect.cpus import budget

    def threads(*extra):
        code = "import os, torch; print('threads', torch.get_num_threads(), os.environ.get('OMP_NUM_THREADS'))"
        proc = subprocess.run(["mpirt", "launch", "-np", str(np_), *extra, "--", sys.executable, "-c", code],
                              capture_output=True, text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})
        assert proc.returncode == 0, proc.stderr
        return sorted(line.split("] ", 1)[1].split()[1:] for line in proc.stdout.splitlines() if "threads" in line)

    share = str(max(1, budget().count // np_))
    assert threads() == [[share, share]] * np_
    assert threads("--env", "OMP_NUM_THREADS=2") == [["2", "2"]] * np_
