"""`python -m mpirt SCRIPT` runs a script as `python SCRIPT` would: what it imports from beside
itself is found, wherever the job's working directory is; and it ends as a rank should."""

import os
import subprocess
import sys


def test_a_script_imports_the_modules_beside_it(tmp_path):
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "helper.py").write_text("VALUE = 42\n")
    (project / "main.py").write_text("import sys\nimport helper\nprint(helper.VALUE, sys.argv[1:], __name__)\n")
    (elsewhere / "helper.py").write_text("VALUE = 'the wrong one'\n")  # the working directory's is not imported
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    for command in ([sys.executable, str(project / "main.py"), "a"],
                    [sys.executable, "-m", "mpirt", str(project / "main.py"), "a"],
                    [sys.executable, "-m", "mpirt", "../project/main.py", "a"]):
        proc = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout) == (0, "42 ['a'] __main__\n"), (command, proc.stderr)


def test_threads_still_taking_the_gil_at_the_end_get_it_before_the_interpreter_finalizes(tmp_path):
    """A torch.distributed backend thread (gloo's, under DDP) that drops a finished collective's
    tensors just after the program ends takes the GIL for it; in a finalizing interpreter Python
    ends such a thread inside a C++ destructor and the rank dies of SIGABRT. Here a daemon
    thread stands for it: without the handover it is gone before it can print."""
    script = tmp_path / "late.py"
    script.write_text("import threading, time\nimport torch.distributed\n\n\ndef late():\n    time.sleep(0.01)\n"
                      "    print('late', flush=True)\n\n\nthreading.Thread(target=late, daemon=True).start()\n")
    proc = subprocess.run([sys.executable, "-m", "mpirt", str(script)], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "late\n"), proc.stderr
