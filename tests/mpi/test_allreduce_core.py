"""The compiled core against numpy at 1, 2 and 4 ranks (4 oversubscribes 2 cores)."""

import pytest

from conftest import last_json

pytestmark = pytest.mark.mpi

ALGOS, DTYPES, OPS, COUNTS, MODES = 6, 5, 4, 5, 2


STAGING = {"default": {}, "cached": {"MPIRT_SHM_STORES": "cached", "MPIRT_SHM_CHUNK": "4096"},
           "streaming": {"MPIRT_SHM_STORES": "streaming", "MPIRT_SHM_CHUNK": "4096"},
           "shared-buffers": {"MPIRT_TEST_SHARED_BUFFERS": "1"}}


@pytest.mark.parametrize("np_", [1, 2, 4])
@pytest.mark.parametrize("staging", list(STAGING))
def test_every_algorithm_dtype_op_matches_numpy(mpiexec, np_, staging):
    """By default (1 MiB rounds; from 256 KiB `shm` measures which stores stage faster, so both
    run), with each kind of store forced in 4 KiB rounds (many rounds, short last ones), and
    with every buffer in memory the local ranks share (`shm` without staging)."""
    report = last_json(mpiexec.python(np_, "allreduce_matrix.py", env=STAGING[staging], timeout=600).stdout)
    assert report["size"] == np_
    assert report["cases"] == ALGOS * DTYPES * OPS * COUNTS * MODES + ALGOS
    assert report["n_failures"] == 0, "\n".join(report["failures"])


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_ordered_gives_the_serial_folds_bits_however_the_buffer_is_split(mpiexec, np_):
    """The reproducibility users ask of DDP and NCCL (pytorch#48576, NVIDIA/nccl#157): the same
    bits whatever the bucket boundaries, equal to a fold over the ranks in rank order."""
    report = last_json(mpiexec.python(np_, "ordered_bits.py", timeout=600).stdout)
    assert report["size"] == np_ and report["cases"] == 4 * 3 * 3
    assert report["n_failures"] == 0, "\n".join(report["failures"])


def test_bad_buffers_are_refused_with_the_fix(mpiexec):
    out = mpiexec.python(1, "allreduce_errors.py").stdout
    report = last_json(out)
    devices = {k: report.pop(k) for k in ("cuda", "cuda-index", "host-as-cuda", "no-such-device") if k in report}
    assert report == {
        "noncontiguous": "array is not C-contiguous; pass numpy.ascontiguousarray(a)",
        "mismatch": "recv (3 x float32 on cpu) does not match send (4 x float32 on cpu); allocate recv like send",
        "dtype": "array dtype int64 is not supported; use float32, float64, float16 or int32 "
                 "(bfloat16 through a torch tensor)",
        "op": "unknown op 'prod'; use one of sum, min, max, avg",
        "algo": "unknown algorithm 'tree'; use one of mpi, ring, shm, auto, ordered, hier",
        "readonly": "the result buffer is read-only; pass a writable array (a.copy())",
        "scalar": "allreduce takes a numpy array, not the scalar numpy.float32; reduce numpy.array([x]) and read "
                  "its element",
        "device-name": "ValueError: unknown device 'gpu': use cpu, cuda or cuda:N",
        "device-index": "ValueError: unknown device 'cuda:x': use cpu, cuda or cuda:N",
    }
    assert_device_errors(devices)


def assert_device_errors(seen: dict) -> None:
    """What the core says of CUDA buffers: here without a device, or, on a GPU machine, of a
    host address named as device memory and of a device that is not there."""
    import torch

    if not torch.cuda.is_available():
        assert set(seen) == {"cuda", "cuda-index"}
        for message in seen.values():
            assert message.startswith("RuntimeError: CUDA buffers were given but "), message
        return
    assert seen == {"host-as-cuda": "ValueError: the send buffer is host memory, not on CUDA device 0 as the call "
                                    "says; pass both buffers on the device named",
                    "no-such-device": "ValueError: CUDA device 99 was named but this process sees "
                                      f"{torch.cuda.device_count()} device{'' if torch.cuda.device_count() == 1 else 's'}; "
                                      "check the tensors' device and CUDA_VISIBLE_DEVICES"}


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_state_follows_communicators_made_and_freed(mpiexec, np_):
    report = last_json(mpiexec.python(np_, "comm_churn.py").stdout)
    assert report == {"size": np_, "wrong": []}


@pytest.mark.parametrize("f16c", ["default", "0"], ids=["f16c-where-the-cpu-has-it", "portable"])
def test_every_float16_value_matches_numpy(mpiexec, f16c):
    """fp16 is widened and rounded by F16C instructions where the CPU has them, else in
    portable code (MPIRT_F16C=0): both must give numpy's result for every bit pattern."""
    env = {} if f16c == "default" else {"MPIRT_F16C": f16c}
    report = last_json(mpiexec.python(2, "half_every_value.py", env=env).stdout)
    assert report == {"cases": 8, "wrong": {}}


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_settings_that_must_agree_are_checked_on_every_rank(mpiexec, np_):
    """A ring threshold that differs between ranks (or does not parse on one) would make `auto`
    pick different algorithms and hang; a ring segment that differs would truncate messages:
    every rank gets the error instead, as for `shm` rounds that differ (each rank would read the
    others' staging at the wrong places). With 4 KiB segments, waiting by sleeping 50 us between
    tests, `ring` still gives the right sum, and so does `shm` in 4 KiB rounds."""
    report = last_json(mpiexec.python(np_, "agreed_settings.py").stdout)
    fixes = {"MPIRT_AUTO_RING_MIN_BYTES": ("4M", "4M", "is not a byte count; give one (e.g. 4194304), or off, or "
                                                       "unset it"),
             "MPIRT_RING_SEGMENT_BYTES": ("1024", "0x1000", "is not a byte count from 4096 to 1073741824; give one "
                                                            "(e.g. 61440) or unset it"),
             "MPIRT_RING_WAIT_US": ("-1", "1e3", "is not a number of microseconds from 0 to 100000; give one (e.g. "
                                                 "50), or 0 to poll, or unset it"),
             "MPIRT_SHM_CHUNK": ("1024", "4k", "is not a byte count from 4096 to 1073741824; give one (e.g. 1048576) "
                                               "or unset it"),
             "MPIRT_SHM_STORES": ("nt", "Cached", "is not auto, cached or streaming; give one of them or unset it")}
    for name, (bad, bad_on_last, fix) in fixes.items():
        differs = (f"{name} differs between ranks (or is wrong on one); set it the same on every rank (mpirt launch "
                   "forwards the launcher's) or unset it")
        assert report[f"{name} same"] == ["ok"] * np_
        assert report[f"{name} differs"] == (["ok"] if np_ == 1 else [differs] * np_)
        assert report[f"{name} bad"] == [f"{name}={bad} {fix}"] * np_
        on_last = f"{name}={bad_on_last} {fix}"
        assert report[f"{name} bad on one rank"] == ([on_last] if np_ == 1 else [differs] * (np_ - 1) + [on_last])
    assert report["MPIRT_AUTO_RING_MIN_BYTES off"] == ["ok"] * np_


@pytest.mark.parametrize("np_", [1, 2, 4])
def test_shared_buffers_misused_fail_on_every_rank_with_the_fix(mpiexec, np_):
    """A shared buffer on some ranks and a private one on others, or other offsets, would have
    `shm` read memory the others never wrote: every rank raises the same error instead (no rank
    left waiting), and the next call works. Allocations check their sizes agree."""
    report = last_json(mpiexec.python(np_, "shared_buffers.py").stdout)
    ok, mixed = ["ok"] * np_, "a shared buffer on some ranks and not on others"
    differ = ("ValueError: {}: local ranks 0 and 1 passed different buffers ({}); pass every rank's shared "
              "buffer at the same offsets and count, or none")
    assert report == {
        "sum": ok,
        "private on rank 0": ok if np_ == 1 else [differ.format("shm", mixed)] * np_,
        "after private": ok,
        "private on rank 0, hier": ok if np_ == 1 else [differ.format("hier", mixed)] * np_,
        "other offset on rank 0": ok if np_ == 1 else [differ.format("shm", "other shared buffers, offsets or "
                                                                            "counts")] * np_,
        "after offset": ok,
        "sizes differ": ok if np_ == 1 else [
            f"ValueError: shared buffers differ in size between the ranks of a node ({44 if r == 0 else 40} bytes on "
            "this one); allocate the same size on every rank" for r in range(np_)],
        "freed and made again": ok,
        "free a private array": ["ValueError: shared_free: not a shared buffer of this communicator"] * np_,
        "no elements": ["ValueError: shared_zeros needs at least one element along every dimension, not shape "
                        "(2, 0)"] * np_,
        "bad shape": ["TypeError: shape 2.5: give an int or a tuple of ints"] * np_,
        "int64": ["TypeError: dtype int64 is not supported; use float32, float64, float16 or int32 (bfloat16 as "
                  "torch.bfloat16)"] * np_,
    }
