"""A finished launch stops the pod's mesh sidecar (Istio's quitquitquit) so the Job can complete."""

import http.server
import os
import socket
import subprocess
import sys
import threading

import pytest

from launcher.sidecar import ISTIO_QUIT, SidecarError, quit_url


class Agent:
    """An HTTP endpoint on loopback standing in for the sidecar's agent: records each request and
    whether the job had already written its file when the request came."""

    def __init__(self, port: int = 0, done_file: str = ""):
        self.requests: list[tuple[str, str, bool]] = []
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                agent.requests.append(("POST", self.path, os.path.exists(done_file)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def launch(*args, env=None):
    return subprocess.run([sys.executable, "-m", "launcher.cli", "launch", "-np", "1", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def test_the_setting_decides_where_to_post():
    pod = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    assert quit_url("auto", pod, lambda a: True) == ISTIO_QUIT
    assert quit_url("auto", pod, lambda a: False) is None  # no sidecar in this pod
    assert quit_url("auto", {}, lambda a: True) is None  # not in a pod: never post to whatever listens
    assert quit_url("none", pod, lambda a: True) is None
    assert quit_url("http://127.0.0.1:4191/shutdown", {}, lambda a: False) == "http://127.0.0.1:4191/shutdown"
    with pytest.raises(SidecarError, match="give auto, none, or the URL"):
        quit_url("127.0.0.1:15020", pod, lambda a: True)


@pytest.mark.parametrize("exit_status", [0, 3])
def test_sidecar_is_stopped_after_the_job_whatever_its_exit(tmp_path, exit_status):
    done = tmp_path / "done"
    agent = Agent(done_file=str(done))
    try:
        proc = launch("--sidecar-quit", f"http://127.0.0.1:{agent.port}/quitquitquit", "--", sys.executable, "-c",
                      f"open({str(done)!r}, 'w').close(); raise SystemExit({exit_status})")
    finally:
        agent.close()
    assert proc.returncode == exit_status, proc.stderr
    assert agent.requests == [("POST", "/quitquitquit", True)]  # once, after the job
    assert "mpirt: asked the sidecar to stop" in proc.stderr


def test_auto_finds_istio_agent_in_a_pod(tmp_path):
    try:
        agent = Agent(port=15020, done_file=str(tmp_path / "done"))
    except OSError as e:
        pytest.skip(f"port 15020 on loopback is taken here ({e}): the auto case needs it")
    try:
        proc = launch("--", "true", env={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "MPIRT_SIDECAR_QUIT": "auto"})
        plain = launch("--", "true", env={"MPIRT_SIDECAR_QUIT": "auto"})  # not a pod
    finally:
        agent.close()
    assert proc.returncode == 0 and plain.returncode == 0, proc.stderr + plain.stderr
    assert agent.requests == [("POST", "/quitquitquit", False)]


def test_unreachable_sidecar_keeps_the_job_status():
    with socket.socket() as s:  # a port with nothing behind it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = launch("--sidecar-quit", f"http://127.0.0.1:{port}/quitquitquit", "--", "true")
    assert proc.returncode == 0, proc.stderr
    assert "could not reach the sidecar to stop it" in proc.stderr


def test_bad_setting_is_refused_before_anything_runs(tmp_path):
    proc = launch("--sidecar-quit", "istio", "--", "touch", str(tmp_path / "ran"))
    assert proc.returncode == 2 and "give auto, none, or the URL" in proc.stderr
    assert not (tmp_path / "ran").exists()
