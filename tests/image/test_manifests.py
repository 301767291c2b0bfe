"""The example manifests agree with what the image and its entrypoint read: the port sshd
listens on, where the ssh Secret is, the role each pod gets from what the operator (or
scheduler) adds, the commands the launcher is given, /dev/shm, and the non-root settings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.cli import main as cli
from launcher.roles import detect

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "images" / "examples"


def containerfile_env() -> dict[str, str]:
    text = (ROOT / "Containerfile").read_text().split("FROM ${BASE} AS runtime")[1]
    block = re.search(r"^ENV (.*?)(?=^\S)", text, re.S | re.M).group(1)
    return dict(re.findall(r"(\w+)=(\S+?)\s*\\?\s*$", block, re.M))


def exposed_port() -> int:
    return int(re.search(r"^EXPOSE (\d+)$", (ROOT / "Containerfile").read_text(), re.M).group(1))


def load(name: str) -> list[dict]:
    return list(yaml.safe_load_all((EXAMPLES / name).read_text()))


def mpijob_pods(job: dict) -> dict[str, dict]:
    return {role: spec["template"]["spec"] for role, spec in job["spec"]["mpiReplicaSpecs"].items()}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def check_worker(pod: dict, container: dict) -> None:
    port = exposed_port()
    assert int(containerfile_env()["MPIRT_SSH_PORT"]) == port == 2222
    assert {p["containerPort"] for p in container["ports"]} == {port}
    assert container["readinessProbe"]["tcpSocket"]["port"] == port
    shm = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"}
    assert [v["emptyDir"]["medium"] for v in pod["volumes"] if v["name"] in shm] == ["Memory"]


def check_launcher_args(args: list[str]) -> None:
    """The args parse as `mpirt launch -- COMMAND` with the image's entrypoint."""
    assert args[:2] == ["launch", "--"] and len(args) > 2
    assert cli.resolve_command(cli.make_context("mpirt", list(args), resilient_parsing=True), list(args))[0] == "launch"


def ssh_dir(container: dict) -> str:
    return env_of(container).get("MPIRT_SSH_DIR", "/root/.ssh")  # mpirt launch / worker default


@pytest.mark.parametrize("name", ["mpijob-train.yaml", "mpijob-allreduce-nonroot.yaml"])
def test_mpijob(name, tmp_path):
    (job,) = load(name)
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v2beta1", "MPIJob")
    pods = mpijob_pods(job)
    (launcher,), (worker,) = pods["Launcher"]["containers"], pods["Worker"]["containers"]
    for c in (launcher, worker):
        assert "command" not in c, "a command would replace the mpirt entrypoint"
        assert ssh_dir(c) == job["spec"]["sshAuthMountPath"]
    check_worker(pods["Worker"], worker)
    check_launcher_args(launcher["args"])
    assert "args" not in worker  # the image's CMD: act on the role
    assert re.search(r'^CMD \["pod"\]$', (ROOT / "Containerfile").read_text(), re.M)
    # what the operator adds makes the roles our entrypoint acts on
    (tmp_path / "etc/mpi").mkdir(parents=True)
    (tmp_path / "etc/mpi/hostfile").write_text(f"{job['metadata']['name']}-worker-0 slots={job['spec']['slotsPerWorker']}\n")
    assert detect({"K_MPI_JOB_ROLE": "launcher", **env_of(launcher)}, tmp_path, "x-launcher").kind == "launcher"
    assert detect({"K_MPI_JOB_ROLE": "worker", **env_of(worker)}, tmp_path, "x-worker-0").kind == "worker"


@pytest.mark.mpi
def test_torchrun_mpijob_runs_its_script_unchanged(tmp_path):
    """The ConfigMap's script, written for torchrun, trains under `mpirt launch -- python -m
    mpirt` as the launcher's args say, on 2 local ranks here; the workers mount it where the
    args name it."""
    config, job = load("mpijob-torchrun.yaml")
    pods = mpijob_pods(job)
    (launcher,), (worker,) = pods["Launcher"]["containers"], pods["Worker"]["containers"]
    check_worker(pods["Worker"], worker)
    args = launcher["args"]
    check_launcher_args(args)
    mount = next(m["mountPath"] for m in worker["volumeMounts"] if m["name"] == "script")
    volume = next(v for v in pods["Worker"]["volumes"] if v["name"] == "script")
    assert volume["configMap"]["name"] == config["metadata"]["name"]
    (script_name,) = config["data"]
    assert args[-1] == f"{mount}/{script_name}" and args[2:5] == ["python", "-m", "mpirt"]
    script = tmp_path / script_name
    script.write_text(config["data"][script_name])
    proc = subprocess.run(["mpirt", "launch", "-np", "2", "--", sys.executable, "-m", "mpirt", str(script)],
                          capture_output=True, text=True, timeout=180, env={**os.environ, "EPOCHS": "2"})
    assert proc.returncode == 0, proc.stderr
    losses = [float(line.rsplit(" ", 1)[1]) for line in proc.stdout.splitlines() if "loss" in line]
    assert len(losses) == 2 and all(0 < x < 10 for x in losses), proc.stdout


def test_nonroot_mpijob_matches_the_restricted_scc():
    (job,) = load("mpijob-allreduce-nonroot.yaml")
    for pod in mpijob_pods(job).values():
        sc = pod["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["runAsGroup"] == 0
        (c,) = pod["containers"]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    home = containerfile_env()["HOME"]
    assert job["spec"]["sshAuthMountPath"].startswith(home + "/")  # inside the group-writable home
    assert "chgrp -R 0 /home/mpirt" in (ROOT / "Containerfile").read_text() and home == "/home/mpirt"


def test_trainer_runtime_and_trainjob(tmp_path):
    runtime, trainjob = load("trainer-runtime.yaml")
    assert runtime["kind"] == "ClusterTrainingRuntime" and trainjob["kind"] == "TrainJob"
    assert runtime["apiVersion"] == trainjob["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert trainjob["spec"]["runtimeRef"]["name"] == runtime["metadata"]["name"]
    mpi = runtime["spec"]["mlPolicy"]["mpi"]
    assert mpi["mpiImplementation"] == "OpenMPI"
    jobs = {j["name"]: j for j in runtime["spec"]["template"]["spec"]["replicatedJobs"]}
    node_pod = jobs["node"]["template"]["spec"]["template"]["spec"]
    launcher_tpl = jobs["launcher"]["template"]["spec"]["template"]
    # Trainer mounts the Secret and the hostfile only into containers named `node`
    (node,), (launcher,) = node_pod["containers"], launcher_tpl["spec"]["containers"]
    assert node["name"] == launcher["name"] == "node"
    assert jobs["launcher"]["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert jobs["launcher"]["dependsOn"] == [{"name": "node", "status": "Ready"}]
    check_worker(node_pod, node)
    assert node["args"] == ["worker"]
    assert ssh_dir(node) == ssh_dir(launcher) == mpi["sshAuthMountPath"]
    assert "command" not in trainjob["spec"]["trainer"]  # a command would replace the entrypoint
    check_launcher_args(trainjob["spec"]["trainer"]["args"])
    # what Trainer gives the launcher: the hostfile at /etc/mpi and its variable, no role variable
    (tmp_path / "etc/mpi").mkdir(parents=True)
    (tmp_path / "etc/mpi/hostfile").write_text("mpirt-train-node-0-0.mpirt-train slots=1\n")
    role = detect({"OMPI_MCA_orte_default_hostfile": "/etc/mpi/hostfile"}, tmp_path, "mpirt-train-launcher-0-0")
    assert (role.kind, role.system) == ("launcher", "trainer")


def test_volcano_job(tmp_path):
    """What Volcano's svc plugin adds (VC_<TASK>_HOSTS, /etc/volcano/<task>.host) makes the
    master pod the launcher over the worker task's hosts, and each worker pod a worker; the
    ssh plugin mounts its Secret where the image looks and says the workers' port."""
    (job,) = load("volcano-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch.volcano.sh/v1alpha1", "Job")
    tasks = {t["name"]: t for t in job["spec"]["tasks"]}
    assert job["spec"]["minAvailable"] == sum(t["replicas"] for t in tasks.values())  # gang: all or none
    assert job["spec"]["plugins"]["ssh"] == [f"--ssh-port={exposed_port()}"] and "svc" in job["spec"]["plugins"]
    (master,), (worker,) = (tasks[n]["template"]["spec"]["containers"] for n in ("master", "worker"))
    for c in (master, worker):
        assert "command" not in c, "a command would replace the mpirt entrypoint"
        assert ssh_dir(c) == "/root/.ssh"  # the ssh plugin's default mount path
    check_worker(tasks["worker"]["template"]["spec"], worker)
    check_launcher_args(master["args"])
    assert "args" not in worker
    assert {"event": "TaskCompleted", "action": "CompleteJob"} in tasks["master"]["policies"]
    name = job["metadata"]["name"]
    hosts = {t: [f"{name}-{t}-{i}.{name}" for i in range(tasks[t]["replicas"])] for t in tasks}
    env = {f"VC_{t.upper()}_HOSTS": ",".join(h) for t, h in hosts.items()}
    role = detect(env, tmp_path, f"{name}-master-0")
    assert (role.kind, role.system) == ("launcher", "volcano")
    assert [h.name for h in role.hosts] == hosts["worker"]
    assert detect(env, tmp_path, f"{name}-worker-1").kind == "worker"
    (tmp_path / "etc/volcano").mkdir(parents=True)  # the same from the mounted files alone
    for t, h in hosts.items():
        (tmp_path / "etc/volcano" / f"{t}.host").write_text("\n".join(h) + "\n")
    assert [h.name for h in detect({}, tmp_path, f"{name}-master-0").hosts] == hosts["worker"]
