"""The `cluster` fixture: hosts as network namespaces (tests/cluster/netns.py)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from netns import Cluster, namespaces_usable


@pytest.fixture
def cluster(tmp_path):
    """Makes clusters of N worker hosts (optionally all under one UID); skips where namespaces cannot be made."""
    reason = namespaces_usable()
    if reason:
        pytest.skip(reason)
    made = []

    def make(workers: int = 3, uid: int | None = None) -> Cluster:
        base = tmp_path
        if uid is not None:  # a directory the unprivileged user can reach and write
            base = Path(tempfile.mkdtemp(prefix="mpirt-cluster-"))
            os.chown(base, uid, uid)
        c = Cluster(base, workers, uid)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
        if c.uid is not None:
            shutil.rmtree(c.tmp, ignore_errors=True)
