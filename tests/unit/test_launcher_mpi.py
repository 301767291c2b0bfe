"""The mpirun table: detection from real --version texts, argv as literal lists."""

import pytest

from launcher.mpi import (MpiError, MpiImpl, build_argv, check_command, control_env, forwarded,
                          known_faults, launch_argv, local_argv, masked, parse_version_output, ssh_env, user_env)

OMPI4 = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
OMPI5 = "mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/\n"
MPICH = "HYDRA build details:\n    Version:                                 4.0.2\n    Release Date: ...\n"
INTEL = "Intel(R) MPI Library for Linux* OS, Version 2021.13 Build 20240701 (id: 0)\nCopyright 2003-2024\n"


@pytest.mark.parametrize("text,family,version", [
    (OMPI4, "openmpi", (4, 1, 4)), (OMPI5, "openmpi", (5, 0, 11)),
    (MPICH, "mpich", (4, 0, 2)), (INTEL, "intel", (2021, 13)),
])
def test_detects_implementation_and_version(text, family, version):
    impl = parse_version_output(text, "/usr/bin/mpirun")
    assert (impl.family, impl.version) == (family, version)


def test_unknown_mpirun_names_the_fix():
    with pytest.raises(MpiError, match="not Open MPI, MPICH or Intel MPI; point --mpirun"):
        parse_version_output("srun 23.02\n", "srun")


def test_openmpi_argv_as_root_oversubscribed():
    impl = MpiImpl("openmpi", (4, 1, 4), "/usr/bin/mpirun")
    assert local_argv(impl, 4, cores=2, uid=0) == [
        "/usr/bin/mpirun", "-np", "4", "--noprefix", "--oversubscribe", "--allow-run-as-root"]


def test_openmpi_argv_as_user_within_cores():
    impl = MpiImpl("openmpi", (5, 0, 11), "mpirun")
    assert local_argv(impl, 2, cores=2, uid=1000) == ["mpirun", "-np", "2"]


def test_open_mpi_from_a_system_directory_leaves_the_ranks_path_alone():
    """Started as /usr/bin/mpirun, Open MPI would put /usr/bin first on every rank's PATH, and the
    system's python before the venv's on the user's PATH; installed elsewhere, its prefix is how
    the hosts find its daemons, so it stays."""
    for family, version, mpirun in (("openmpi", (4, 1, 4), "/usr/bin/mpirun"), ("openmpi", (5, 0, 7), "/usr/local/bin/mpirun"),
                                    ("openmpi", (4, 1, 4), "/bin/mpirun")):
        assert "--noprefix" in local_argv(MpiImpl(family, version, mpirun), 2, cores=2, uid=1)
        assert "--noprefix" in build_argv(MpiImpl(family, version, mpirun), 2, "hf", ["a"], uid=1, tag_output=False,
                                          export=[])
    for family, version, mpirun in (("openmpi", (4, 1, 4), "/opt/openmpi/bin/mpirun"),
                                    ("openmpi", (5, 0, 7), "/opt/venv/bin/mpirun"), ("mpich", (4, 0, 2), "/usr/bin/mpiexec"),
                                    ("intel", (2021, 15), "/usr/bin/mpiexec")):
        assert "--noprefix" not in local_argv(MpiImpl(family, version, mpirun), 2, cores=2, uid=1)
        assert "--noprefix" not in build_argv(MpiImpl(family, version, mpirun), 2, "hf", ["a"], uid=1,
                                              tag_output=False, export=[])


def test_mpich_needs_no_extra_flags():
    impl = MpiImpl("mpich", (4, 0, 2), "mpiexec")
    assert local_argv(impl, 8, cores=2, uid=0) == ["mpiexec", "-n", "8"]


def test_zero_ranks_is_refused():
    with pytest.raises(ValueError, match="need at least one rank"):
        local_argv(MpiImpl("mpich", (4,), "mpiexec"), 0, cores=2, uid=0)


def test_launch_argv_tags_output_and_appends_the_command():
    impl = MpiImpl("openmpi", (4, 1, 4), "/usr/bin/mpirun")
    assert launch_argv(impl, 4, ["mpirt", "train"], cores=2, uid=0, tag_output=True) == [
        "/usr/bin/mpirun", "-np", "4", "--noprefix", "--oversubscribe", "--allow-run-as-root", "--bind-to", "none",
        "--tag-output", "mpirt", "train"]
    mpich = MpiImpl("mpich", (4, 0, 2), "mpiexec")
    assert launch_argv(mpich, 2, ["a.out"], cores=2, uid=1000, tag_output=True) == ["mpiexec", "-n", "2", "-prepend-pattern",
                                                                                      "[mpirt:%r]", "a.out"]
    assert launch_argv(mpich, 2, ["a.out"], cores=2, uid=1000, tag_output=False) == ["mpiexec", "-n", "2", "a.out"]


def test_launch_without_a_command_says_where_it_goes():
    with pytest.raises(ValueError, match="put it after --"):
        launch_argv(MpiImpl("mpich", (4,), "mpiexec"), 2, [], cores=2, uid=0, tag_output=True)


def test_a_mistyped_option_never_reaches_mpirun():
    """`mpirt launch --max-restart 3 python t.py` would hand mpirun `--max-restart` as its own option."""
    ompi = MpiImpl("openmpi", (4, 1, 4), "mpirun")
    with pytest.raises(ValueError, match="'--max-restart' is not an option of mpirt launch"):
        launch_argv(ompi, 2, ["--max-restart", "3", "python", "t.py"], cores=2, uid=0, tag_output=True)
    with pytest.raises(ValueError, match="'-host' is not an option"):
        build_argv(ompi, 2, "/h", ["-host", "w9", "a.out"], uid=0, tag_output=False, export=[])


def test_multi_host_argv_per_implementation():
    ompi4 = MpiImpl("openmpi", (4, 1, 4), "/usr/bin/mpirun")
    assert build_argv(ompi4, 6, "/s/hostfile", ["python", "t.py"], uid=0, tag_output=True,
                      export=["PATH", "MPIRT_ERROR_DIR"]) == [
        "/usr/bin/mpirun", "-np", "6", "--hostfile", "/s/hostfile", "--bind-to", "none", "--noprefix",
        "--allow-run-as-root", "--tag-output", "-x", "PATH", "-x", "MPIRT_ERROR_DIR", "python", "t.py"]
    ompi5 = MpiImpl("openmpi", (5, 0, 7), "mpirun")
    assert build_argv(ompi5, 2, "hf", ["a"], uid=1000, tag_output=False, export=[]) == [
        "mpirun", "-np", "2", "--hostfile", "hf", "--bind-to", "none", "a"]
    mpich = MpiImpl("mpich", (4, 0, 2), "mpiexec")
    assert build_argv(mpich, 4, "hf", ["a"], uid=0, tag_output=True, export=["PATH"]) == [
        "mpiexec", "-n", "4", "-f", "hf", "-prepend-pattern", "[mpirt:%r]", "a"]
    intel = MpiImpl("intel", (2021, 15), "mpiexec")  # -f would ignore the counts: a machine file keeps them
    assert build_argv(intel, 4, "hf", ["a"], uid=0, tag_output=True, export=["PATH"]) == [
        "mpiexec", "-n", "4", "-machinefile", "hf", "-prepend-pattern", "[mpirt:%r]", "a"]
    # Hydra's proxies are told where the launcher is (they would look up its host name): MPICH's
    # by address, Intel's by the launcher's interface; Open MPI's need not be
    assert build_argv(mpich, 4, "hf", ["a"], uid=0, tag_output=False, export=[], control="10.1.2.3") == [
        "mpiexec", "-n", "4", "-f", "hf", "-localhost", "10.1.2.3", "a"]
    assert build_argv(intel, 4, "hf", ["a"], uid=0, tag_output=False, export=[], control="10.1.2.3") == [
        "mpiexec", "-n", "4", "-machinefile", "hf", "a"]
    assert control_env(intel, "eth0") == {"I_MPI_HYDRA_IFACE": "eth0"} and control_env(intel, None) == {}
    assert control_env(mpich, "eth0") == {} == control_env(ompi4, "eth0")
    assert build_argv(ompi4, 1, "hf", ["a"], uid=1, tag_output=False, export=[], control="10.1.2.3") == [
        "/usr/bin/mpirun", "-np", "1", "--hostfile", "hf", "--bind-to", "none", "--noprefix", "a"]
    with pytest.raises(ValueError):
        build_argv(mpich, 1, "hf", ["a"], uid=1, tag_output=False, export=[], control="w0; rm -rf /")


def test_ssh_arguments_reach_each_implementation_by_its_own_variable():
    args = ["-F", "/tmp/s/ssh_config"]
    assert ssh_env(MpiImpl("openmpi", (4, 1, 4), "m"), args) == {"OMPI_MCA_plm_rsh_args": "-F /tmp/s/ssh_config",
                                                                 "OMPI_MCA_plm_rsh_no_tree_spawn": "1"}
    assert ssh_env(MpiImpl("openmpi", (5, 0, 7), "m"), args) == {"PRTE_MCA_plm_ssh_args": "-F /tmp/s/ssh_config",
                                                                 "PRTE_MCA_plm_ssh_no_tree_spawn": "1"}
    assert ssh_env(MpiImpl("mpich", (4,), "m"), args) == {"HYDRA_LAUNCHER_EXTRA_ARGS": "-F /tmp/s/ssh_config",
                                                         "HYDRA_LAUNCH_EXTRA_ARGS": "-F /tmp/s/ssh_config"}
    assert ssh_env(MpiImpl("intel", (2021,), "m"), args) == {
        "I_MPI_HYDRA_BOOTSTRAP_EXEC_EXTRA_ARGS": "-F /tmp/s/ssh_config", "I_MPI_HYDRA_BRANCH_COUNT": "0"}
    with pytest.raises(ValueError, match="shell characters"):
        ssh_env(MpiImpl("mpich", (4,), "m"), ["-F", "/tmp/x;rm -rf /"])


def test_forwarded_environment_never_carries_secrets():
    env = {"PATH": "/bin", "LD_LIBRARY_PATH": "/l", "MPIRT_ERROR_DIR": "/e", "NCCL_IB_HCA": "mlx5",
           "HOME": "/root", "BASH_FUNC_x%%": "() {}", "CUDA_VISIBLE_DEVICES": "0", "AWS_SECRET_ACCESS_KEY": "s",
           "HF_TOKEN": "t", "MPIRT_API_KEY": "k", "NCCL_DEBUG": "INFO", "bad name": "x"}
    assert forwarded(env, also=["HOME", "HF_TOKEN", "NOT_SET"]) == [
        "HOME", "LD_LIBRARY_PATH", "MPIRT_ERROR_DIR", "NCCL_DEBUG", "NCCL_IB_HCA", "PATH"]


def test_variables_the_user_names_are_forwarded_even_like_a_secret():
    env = {"PATH": "/bin", "HF_TOKEN": "t", "DATA_DIR": "/d", "CUDA_VISIBLE_DEVICES": "0"}
    assert forwarded(env, named=["HF_TOKEN", "DATA_DIR", "CUDA_VISIBLE_DEVICES"]) == [
        "CUDA_VISIBLE_DEVICES", "DATA_DIR", "HF_TOKEN", "PATH"]
    assert forwarded(env) == ["PATH"]


def test_env_entries_take_a_value_or_the_one_here():
    here = {"HF_TOKEN": "t", "A": "1"}
    assert user_env(["HF_TOKEN", "B=x=y", "C=", "A=2"], here) == {"HF_TOKEN": "t", "B": "x=y", "C": "", "A": "2"}
    with pytest.raises(ValueError, match="--env NOPE: it is not set here.*NOPE=VALUE"):
        user_env(["NOPE"], here)
    for bad in ("1A=2", "=x", "A B=1", "A-B"):
        with pytest.raises(ValueError, match="is not a variable name; write NAME or NAME=VALUE"):
            user_env([bad], here)
    assert masked({"HF_TOKEN": "t", "AWS_SECRET_ACCESS_KEY": "s", "A": "1"}) == {
        "HF_TOKEN": "<hidden>", "AWS_SECRET_ACCESS_KEY": "<hidden>", "A": "1"}


def test_known_faults_name_the_version_and_the_fix():
    [(text, fix)] = known_faults(MpiImpl("mpich", (4, 0, 2), "m"))
    assert "MPICH 4.0.2" in text and "MPI_Finalize" in text and "mpich#6596" in text
    assert "MPICH 4.2 or later" in fix
    assert len(known_faults(MpiImpl("mpich", (4, 1, 3), "m"))) == 1
    for clean in (MpiImpl("mpich", (4, 2, 0), "m"), MpiImpl("mpich", (3, 4, 3), "m"),
                  MpiImpl("openmpi", (4, 1, 4), "m"), MpiImpl("intel", (2021, 15), "m")):
        assert known_faults(clean) == []


@pytest.mark.parametrize("command,fix", [
    (["torchrun", "--nproc-per-node", "2", "train.py"], "python -m mpirt train.py runs a script written for torchrun"),
    (["/usr/bin/python3", "-m", "torch.distributed.run", "train.py"], "written for torchrun unchanged"),
    (["python", "-m", "torch.distributed.launch", "train.py"], "MASTER_PORT set as torchrun sets them"),
    (["horovodrun", "-np", "4", "python", "train.py"], "import mpirt.horovod as hvd"),
    (["deepspeed", "train.py"], "deepspeed.init_distributed() finds MPI's ranks"),
    (["/usr/bin/mpirun", "-np", "2", "a.out"], "mpirt launch runs mpirun itself"),
    (["mpiexec", "a.out"], "mpirt launch runs mpirun itself"),
])
def test_another_launcher_as_every_rank_is_refused_with_what_to_run(command, fix):
    """torchrun on each host would train each host alone, silently; the others start their own ranks."""
    with pytest.raises(ValueError, match="is a launcher of its own") as e:
        check_command(command)
    assert fix in str(e.value)


@pytest.mark.parametrize("command", [
    ["torchrun", "--nnodes", "2", "--rdzv-endpoint", "w0:29400", "train.py"],  # a rendezvous of its own
    ["torchrun", "--master_addr=w0", "train.py"],
    ["python", "-m", "mpirt", "train.py"], ["python", "train.py", "torchrun"], ["mpirt", "train"],
])
def test_programs_that_are_not_another_launcher_pass(command):
    check_command(command)
