"""Service-mesh sidecars and the end of a job.

A pod's Job completes only when every container has exited, and Istio's classic sidecar
(istio-proxy) never exits on its own: the launcher finishes and its pod stays Running, so the
MPIJob never completes or fails (mpi-operator #480, trainer #1681). When the job ends the launcher
asks the sidecar to quit, as Istio documents for Jobs. Native sidecars (Kubernetes >= 1.28,
Istio's ENABLE_NATIVE_SIDECARS) stop by themselves and need none of this.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.parse
import urllib.request
from typing import Callable, Mapping

ISTIO_AGENT = ("127.0.0.1", 15020)
ISTIO_QUIT = "http://127.0.0.1:15020/quitquitquit"


class SidecarError(ValueError):
    pass


def listening(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def quit_url(setting: str, env: Mapping[str, str],
             is_listening: Callable[[tuple[str, int]], bool] = listening) -> str | None:
    """Where to POST when the job ends: ``none``; a URL given (another mesh, e.g. Linkerd's
    http://127.0.0.1:4191/shutdown); or ``auto``: Istio's agent, in a pod where it listens."""
    if setting == "none":
        return None
    if setting == "auto":
        in_pod = "KUBERNETES_SERVICE_HOST" in env
        return ISTIO_QUIT if in_pod and is_listening(ISTIO_AGENT) else None
    url = urllib.parse.urlsplit(setting)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SidecarError(f"--sidecar-quit {setting!r}: give auto, none, or the URL the sidecar stops on "
                           f"(e.g. {ISTIO_QUIT})")
    return setting


def ask_to_quit(url: str, timeout_s: float = 5.0) -> str:
    """POST to the sidecar's quit endpoint; a line saying how it went (the job's exit code stands)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=timeout_s) as r:
            return f"asked the sidecar to stop ({url}: HTTP {r.status})"
    except urllib.error.HTTPError as e:
        return f"the sidecar did not accept the stop request ({url}: HTTP {e.code}); the pod may keep running"
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        return f"could not reach the sidecar to stop it ({url}: {reason}); the pod may keep running"
