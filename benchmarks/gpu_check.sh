#!/bin/bash
# The GPU checks, as one run on a machine with an NVIDIA GPU and no network (the device
# machine lent to some sessions: Python with CUDA torch, nvcc, cmake and scikit-build-core
# installed; no MPI). Builds mpirt with CUDA against the MPICH wheel carried in .whl/, then:
# doctor and topology, the GPU tests (core on device buffers, data-parallel training on
# CUDA), the CUDA allreduce benchmark on 1 and 2 ranks, a launch of `mpirt train` and of
# examples/train_loop.py, and the scaling sweep on CUDA.
# Everything lands in $OUT (at most 8 files): log.txt and the JSON.
#
# Here, once:  echo /.whl/ >> .git/info/exclude
#              python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#                  --platform manylinux_2_28_x86_64 -d .whl mpich==5.0.2
# Then run:    OUT=<dir> bash benchmarks/gpu_check.sh      (device tool: carry [".whl"])
# Each step has its own time limit and a failed step does not stop the others; the exit
# status is the number of steps that failed.
set -u
out=${OUT:-/tmp/mpirt-gpu-check}
# Where python3 is itself a venv (the device machine's holds torch), install into it: a venv
# made from it would not see its packages. Elsewhere, a venv that sees the system's.
venv=$(python3 -c 'import sys; print(sys.prefix if sys.prefix != sys.base_prefix else "/tmp/mpirt-gpu")')
mkdir -p "$out"
exec > >(tee "$out/log.txt") 2>&1
failed=0

step() {  # step NAME SECONDS COMMAND...: run it, say how it ended
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name"
    timeout "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc in $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    return "$rc"
}

build() {
    { [ -x "$venv/bin/pip" ] || python3 -m venv --system-site-packages "$venv"; } &&
        "$venv/bin/pip" install -q --no-index --no-deps .whl/mpich-*.whl &&
        MPIRT_MPI=mpich "$venv/bin/pip" install -q --no-index --no-deps --no-build-isolation \
            -C build-dir=/tmp/mpirt-gpu-build . &&
        (cd / && "$venv/bin/python" -c 'import mpirt._build as b; print("CUDA built:", b.CUDA_BUILT, b.MPI_SOURCE)')
}

step "machine" 60 sh -c 'nvidia-smi -L; nproc; python3 -c "import torch; print(\"torch\", torch.__version__, torch.cuda.is_available())"'
export venv
export -f build
step "build" 420 bash -c build || { echo "build failed: nothing else can run"; exit 1; }
export PATH="$venv/bin:$PATH" LD_LIBRARY_PATH="$venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export MPI4PY_LIBMPI="$venv/lib/libmpi.so.12" PYTHONUNBUFFERED=1

step "doctor" 120 sh -c "mpirt doctor --json > '$out/doctor.json'; cat '$out/doctor.json'"
step "topo" 60 sh -c "mpirt topo --json > '$out/topo.json'; cat '$out/topo.json'"
step "gpu tests" 420 python3 -m pytest tests/mpi/test_gpu.py -q -rs -p no:cacheprovider
for np in 1 2; do
    step "allreduce cuda np$np" 300 mpirt bench allreduce --np "$np" -D cuda -a all -b 8 -e 256M -c 1 \
        --json "$out/allreduce-cuda-np$np.json"
done
# the README job on the GPU (both ranks share it where there is one): launcher, MPICH 5 and the
# core's pinned staging end to end
step "train np2 bf16" 300 mpirt launch -np 2 -- mpirt train --device cuda --model transformer --steps 100 \
    --compression bf16 --verify-every 25 --out /tmp/mpirt-gpu-train
cp /tmp/mpirt-gpu-train/summary.json "$out/train-summary.json" 2>/dev/null
# a loop of one's own (examples/train_loop.py) on the GPU: DataLoader workers with pinned memory
step "example loop np2 cuda" 180 mpirt launch -np 2 -- python3 -m mpirt examples/train_loop.py --device cuda \
    --steps 60 --out /tmp/mpirt-gpu-loop
# issue 6 on a GPU: the scaling sweep's CUDA training rows, mpirt against DDP over NCCL, at one
# rank (NCCL refuses two ranks on one GPU: with one GPU that is all the sweep can run)
step "scaling cuda" 240 mpirt bench scaling --device cuda --max-np 1 --repeats 2 --steps 5 \
    -o "$out/scaling-cuda.json"
echo "=== steps failed: $failed"
exit "$failed"
