"""`mpirt worker` (a real sshd on a loopback port) and the launcher's ssh setup and readiness
check against it: modes of mounted keys, arbitrary UIDs, pinned host keys, late and missing
workers. Skips only where there is no sshd."""

import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from launcher.ready import release, report, wait_ready
from launcher.ssh import prepare

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not Path("/usr/sbin/sshd").exists(), reason="no /usr/sbin/sshd (openssh-server)")]

WORKER = [sys.executable, "-m", "launcher.cli", "worker"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind=("-t", "ecdsa", "-b", "521", "-m", "PEM")) -> None:
    subprocess.run(["ssh-keygen", "-q", *kind, "-N", "", "-f", str(path)], check=True)


@pytest.fixture
def secret(tmp_path):
    """A job Secret as mpi-operator mounts it: id_rsa (ECDSA P-521 PEM), id_rsa.pub, authorized_keys."""
    d = tmp_path / "secret"
    d.mkdir()
    keygen(d / "id_rsa")
    shutil.copy(d / "id_rsa.pub", d / "authorized_keys")
    return d


class Worker:
    def __init__(self, secret: Path, state: Path, port: int, prefix=(), env=None):
        self.port = port
        self.proc = subprocess.Popen([*prefix, *WORKER, "--port", str(port), "--ssh-dir", str(secret),
                                      "--state-dir", str(state), "--listen", "127.0.0.1"],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})

    def wait_listening(self, timeout=20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mpirt worker exited {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        pytest.fail("mpirt worker never listened")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


@pytest.fixture
def start_worker(tmp_path):
    started = []

    def start(secret, port=None, **kw):
        w = Worker(secret, tmp_path / f"state-{len(started)}", port or free_port(), **kw)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def ssh(setup, *cmd, user=None):
    argv = ["ssh", *setup.ssh_args(), *(["-l", user] if user else []), "127.0.0.1", *cmd]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_job_runs_over_our_ssh_with_a_0640_key_in_a_read_only_dir(secret, start_worker, tmp_path):
    w = start_worker(secret).wait_listening()
    os.chmod(secret / "id_rsa", 0o640)
    os.chmod(secret, 0o555)
    before = (secret / "id_rsa").read_bytes()
    setup = prepare(secret, tmp_path / "client", w.port)
    assert stat.S_IMODE(setup.key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "client").stat().st_mode) == 0o700
    assert (secret / "id_rsa").read_bytes() == before and stat.S_IMODE((secret / "id_rsa").stat().st_mode) == 0o640
    out = ssh(setup, "echo", "ok", "$PATH")
    assert out.returncode == 0, out.stderr
    word, path = out.stdout.split()
    assert word == "ok" and os.path.dirname(sys.executable) in path.split(":")  # PATH reached the session
    assert [r.stage for r in wait_ready(["127.0.0.1", "localhost"], setup, 10)] == ["ready", "ready"]


def test_the_connection_that_proved_a_host_ready_carries_the_next_ssh(secret, start_worker, tmp_path):
    """mpirun's ssh runs over the readiness connection (the same client port: no second
    handshake); release closes it."""
    w = start_worker(secret).wait_listening()
    setup = prepare(secret, tmp_path / "client", w.port)

    def master() -> int:
        return subprocess.run(["ssh", *setup.ssh_args(), "-O", "check", "127.0.0.1"], capture_output=True).returncode

    assert master() != 0  # nothing shared before the check
    r = wait_ready(["127.0.0.1"], setup, 10, command="echo $SSH_CONNECTION")[0]
    assert r.stage == "ready" and master() == 0
    assert ssh(setup, "echo", "$SSH_CONNECTION").stdout == r.output
    running = subprocess.Popen(["ssh", *setup.ssh_args(), "127.0.0.1", "sleep 2; echo still here"],
                               stdout=subprocess.PIPE, text=True)  # another launch's job over the same connection
    time.sleep(0.5)
    release(["127.0.0.1"], setup)
    assert master() != 0  # takes no new sessions
    assert running.communicate(timeout=30)[0].strip() == "still here" and running.returncode == 0
    assert ssh(setup, "echo", "$SSH_CONNECTION").stdout.split()[1] != r.output.split()[1]  # a new connection


def test_probe_session_skips_bashrc_and_job_sessions_keep_it(secret, start_worker, tmp_path):
    """The readiness command's bash sees SHLVL=1 from us (so it is level 2 and skips ~/.bashrc);
    an ordinary session, like mpirun's, starts at level 1 and reads it."""
    if not pwd.getpwuid(os.getuid()).pw_shell.endswith("bash"):
        pytest.skip("this user's login shell is not bash")
    w = start_worker(secret).wait_listening()
    setup = prepare(secret, tmp_path / "client", w.port)
    r = wait_ready(["127.0.0.1"], setup, 10, command="echo $SHLVL")[0]
    release(["127.0.0.1"], setup)
    assert (r.stage, r.output.strip()) == ("ready", "2")
    assert ssh(setup, "echo", "$SHLVL").stdout.strip() == "1"


TRICKY = {  # what a pod spec or a Secret may hold; each must reach sessions byte for byte
    "T_SPACES": "two  words\tand a tab",
    "T_QUOTES": """say "hi" it's""",
    "T_BACKSLASH": "C:\\dir\\ end\\",
    "T_SHELL": "$HOME `id` #not-a-comment ; | & > %h %u",
    "T_EMPTY": "",
    "T_UNICODE": "naïve ☃",
    "HF_TOKEN": "hf_secret=with=equals",
    "my.dotted-name": "Kubernetes allows these",
    "PATH": os.environ["PATH"] + ":/opt/with space/bin",
}


def test_sessions_get_the_containers_environment(secret, start_worker, tmp_path):
    """Ranks started over ssh see what the worker's pod spec set (mpi-operator users had to
    learn `-x` for it): every value exactly, however quoted; not what a login sets itself,
    and not a value sshd_config cannot hold, which the worker names."""
    many = {f"T_MANY_{i}": "v" * 200 for i in range(300)}  # a namespace with many Services
    w = start_worker(secret, env={**TRICKY, **many, "T_NEWLINE": "a\nb", "HOME": "/nonexistent-home",
                                  "SHLVL": "7", "SSH_AUTH_SOCK": "/x"}).wait_listening()
    setup = prepare(secret, tmp_path / "client", w.port)
    out = ssh(setup, sys.executable, "-c", "'import json, os; print(json.dumps(dict(os.environ)))'")
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert {k: seen.get(k) for k in TRICKY if k != "PATH"} == {k: v for k, v in TRICKY.items() if k != "PATH"}
    assert "/opt/with space/bin" in seen["PATH"].split(":")  # the user's ~/.bashrc may reorder it
    assert all(seen.get(k) == v for k, v in many.items())
    assert "T_NEWLINE" not in seen and "SSH_AUTH_SOCK" not in seen
    assert seen["HOME"] == pwd.getpwuid(os.getuid()).pw_dir and seen["SHLVL"] != "7"  # the login's own
    assert "SSH_CONNECTION" in seen
    release(["127.0.0.1"], setup)  # its sshd session holds the worker's output open
    w.stop()
    assert "not passed to ssh sessions (sshd_config cannot hold a line break): T_NEWLINE" in w.proc.stdout.read()


@pytest.mark.parametrize("length", [40, 48, 56, 90])
def test_shared_connections_work_from_a_state_dir_of_any_length(secret, start_worker, length):
    """ssh binds a master's socket at ControlPath plus 17 characters before renaming it: a
    --state-dir of 46 to 54 characters once left every host "not ready" (handshake failed)."""
    w = start_worker(secret).wait_listening()
    base = Path(tempfile.mkdtemp(prefix="mpirt-len-"))
    try:
        client = base / ("d" * (length - len(str(base)) - len("/ssh") - 1)) / "ssh"
        assert len(str(client)) == length
        setup = prepare(secret, client, w.port)
        r = wait_ready(["127.0.0.1"], setup, 10, command="echo $SSH_CONNECTION")[0]
        assert r.stage == "ready", r.reason
        assert ssh(setup, "echo", "$SSH_CONNECTION").stdout == r.output  # over the shared connection
        release(["127.0.0.1"], setup)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_ssh_failures_are_read_into_stages():
    from launcher.ready import diagnose

    assert diagnose("root@h: Permission denied (publickey).\n", "root", 2222) == \
        ("auth", "public key refused for user 'root'")
    assert diagnose("Host key verification failed.\n", "u", 22) == ("auth", "its host key is not the pinned one")
    assert diagnose("ssh: connect to host h port 2222: Connection refused\n", "u", 2222) == \
        ("tcp", "connection refused on port 2222")
    assert diagnose("ssh: connect to host h port 22: Connection timed out\n", "u", 22) == \
        ("tcp", "no answer on port 22")
    assert diagnose("ssh: Could not resolve hostname h: Name or service not known\n", "u", 22)[0] == "dns"
    assert diagnose("kex_exchange_identification: read: Connection reset by peer\n", "u", 22) == \
        ("auth", "ssh handshake failed: kex_exchange_identification: read: Connection reset by peer")


def test_worker_config_is_hardened(secret, start_worker):
    w = start_worker(secret).wait_listening()
    state = Path(w.proc.args[w.proc.args.index("--state-dir") + 1])
    effective = subprocess.run(["/usr/sbin/sshd", "-T", "-f", str(state / "sshd_config")], capture_output=True,
                               text=True, check=True).stdout
    for line in ("passwordauthentication no", "kbdinteractiveauthentication no", "allowtcpforwarding no",
                 "allowagentforwarding no", "x11forwarding no", "permittunnel no", f"port {w.port}",
                 f"authorizedkeysfile {state / 'authorized_keys'}", f"pidfile {state / 'sshd.pid'}"):
        assert line in effective, line
    assert w.stop() == 0


def test_worker_under_a_uid_without_passwd_entry(secret, tmp_path):
    uid = 43210
    probe = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", sys.executable, "-c",
                            "import launcher"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"this Python is not usable by another uid here: {probe.stderr.strip()[-200:]}")
    base = Path(tempfile.mkdtemp(prefix="mpirt-uid-"))  # pytest's own tmp is private to root
    mounted = shutil.copytree(secret, base / "secret")
    for p in (base, mounted, *mounted.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chown(base, uid, uid)
    w = Worker(mounted, base / "state", free_port(),
               prefix=("setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"), env={"HOME": "/tmp"})
    try:
        w.wait_listening()
        check_uid_session(w, secret, tmp_path, uid)
    finally:
        w.stop()
        shutil.rmtree(base, ignore_errors=True)


def check_uid_session(w, secret, tmp_path, uid):
    setup = prepare(secret, tmp_path / "client", w.port)
    out = ssh(setup, "id", "-u", ";", "whoami", user="mpirt")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(uid), "mpirt"]
    assert wait_ready(["127.0.0.1"], setup, 10, user="mpirt")[0].stage == "ready"


def test_pinned_host_keys_are_checked(secret, start_worker, tmp_path):
    keygen(secret / "ssh_host_ed25519_key", ("-t", "ed25519"))
    w = start_worker(secret).wait_listening()
    setup = prepare(secret, tmp_path / "client", w.port)
    assert setup.known_hosts is not None and "StrictHostKeyChecking yes" in setup.config.read_text()
    assert ssh(setup, "true").returncode == 0
    assert wait_ready(["127.0.0.1"], setup, 10)[0].stage == "ready"
    keygen(tmp_path / "other", ("-t", "ed25519"))  # the Secret pins a key the worker does not serve
    shutil.copy(tmp_path / "other.pub", secret / "ssh_host_ed25519_key.pub")
    wrong = prepare(secret, tmp_path / "client2", w.port)
    assert ssh(wrong, "true").returncode != 0
    r = wait_ready(["127.0.0.1"], wrong, 1.5)[0]
    assert r.stage == "auth" and "not the pinned one" in r.detail


def test_late_worker_becomes_ready_within_the_deadline(secret, start_worker, tmp_path):
    port = free_port()
    setup = prepare(secret, tmp_path / "client", port)
    progress = []
    t0 = time.time()
    timer = threading.Timer(4, lambda: start_worker(secret, port=port))  # sshd starts 4 s late
    timer.start()
    results = wait_ready(["127.0.0.1"], setup, 30, on_progress=lambda n, total: progress.append((n, total)))
    timer.join()
    assert results[0].stage == "ready" and progress == [(1, 1)]
    assert 4 <= time.time() - t0 < 30


def test_not_ready_hosts_are_named_with_their_stage_and_cause(secret, start_worker, tmp_path):
    w = start_worker(secret).wait_listening()
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    keygen(stranger / "id_rsa")
    setup_ok = prepare(secret, tmp_path / "client", w.port)
    setup_wrong_key = prepare(stranger, tmp_path / "client2", w.port)
    t0 = time.time()
    results = wait_ready(["worker-9.job.invalid", "127.0.0.1"], setup_wrong_key, 2)
    closed = wait_ready(["127.0.0.1"], prepare(secret, tmp_path / "client3", free_port()), 2)
    assert time.time() - t0 < 8
    assert [r.stage for r in results] == ["dns", "auth"] and closed[0].stage == "tcp"
    text = report(results + closed, 2)
    assert "3 of 3 hosts not ready after 2 s" in text
    assert "worker-9.job.invalid" in text and "no DNS record" in text
    assert "public key refused for user" in text and "connection refused" in text
    for cause in ("pod is not scheduled yet", "sshd is not started", "public key in authorized_keys"):
        assert cause in text
    assert wait_ready(["127.0.0.1"], setup_ok, 5)[0].stage == "ready"


def test_missing_secret_is_a_clear_error(tmp_path):
    proc = subprocess.run([*WORKER, "--ssh-dir", str(tmp_path / "nowhere"), "--state-dir", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "authorized_keys not found: mount the job's ssh Secret" in proc.stderr


def test_a_state_directory_that_cannot_be_made_is_a_clear_error(secret, tmp_path):
    """Under a file here; in a pod, /tmp read-only (readOnlyRootFilesystem) without --state-dir or
    TMPDIR elsewhere. The worker and the launcher both say so before anything starts."""
    (tmp_path / "file").write_text("")
    state = tmp_path / "file" / "state"
    said = f"directory {state} (Not a directory): point --state-dir (MPIRT_STATE_DIR) at a writable directory"
    worker = subprocess.run([*WORKER, "--ssh-dir", str(secret), "--state-dir", str(state), "--check"],
                            capture_output=True, text=True, timeout=30)
    assert worker.returncode == 2 and f"cannot make the private {said}" in worker.stderr, worker.stderr
    (tmp_path / "records").mkdir()
    launch = subprocess.run(["mpirt", "launch", "-H", "127.0.0.1:1", "--ssh-dir", str(secret), "--state-dir",
                             str(state), "--", "true"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(tmp_path / "records")})
    assert launch.returncode == 2 and f"cannot make the {said}" in launch.stderr, launch.stderr
    assert not list((tmp_path / "records").iterdir())  # its error-record directory is not left behind
    assert "Traceback" not in worker.stderr + launch.stderr
    # TMPDIR, where no --state-dir is given
    (tmp_path / "tmp").mkdir()
    ok = subprocess.run([*WORKER, "--ssh-dir", str(secret), "--check"], capture_output=True, text=True, timeout=30,
                        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert ok.returncode == 0 and f"{tmp_path}/tmp/mpirt-sshd-{os.getuid()}/sshd_config is valid" in ok.stdout, \
        ok.stdout + ok.stderr


def test_doctor_checks_each_host(secret, start_worker, tmp_path):
    import json

    w = start_worker(secret).wait_listening()
    hf = tmp_path / "hostfile"
    hf.write_text("127.0.0.1 slots=1\nw9.invalid slots=1\n")
    proc = subprocess.run(["mpirt", "doctor", "--json", "--hostfile", str(hf), "--ssh-dir", str(secret), "--ssh-port",
                           str(w.port), "--wait", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["host 127.0.0.1"]["status"] == "pass"
    assert "; tier tcp, interface " in checks["host 127.0.0.1"]["detail"]  # its probe, over ssh
    assert checks["network (all hosts)"]["detail"].startswith("tier tcp")
    bad = checks["host w9.invalid"]
    assert bad["status"] == "fail" and bad["detail"].startswith("dns: no DNS record")
    assert "pod is not scheduled yet" in bad["fix"]
