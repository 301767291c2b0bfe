#!/bin/bash
# Installs what one stage of the image needs from the base distribution, or says what the base
# lacks and what to set. Usage: install.sh build|runtime FLAVOUR
set -euo pipefail
stage=$1 flavour=$2
here=$(dirname "$0")
fail() { echo "mpirt image: $*" >&2; exit 1; }

[ -f "$here/flavours/$flavour.sh" ] ||
    fail "MPI=$flavour is not a flavour of this image; choose one of: $(cd "$here/flavours" && ls | sed 's/\.sh$//' | tr '\n' ' ')"
command -v apt-get >/dev/null ||
    fail "the base image has no apt-get: build FROM a Debian 12 or Ubuntu 24.04 image (--build-arg BASE=...)"
# shellcheck source=/dev/null
. "$here/flavours/$flavour.sh"

common_build="python3 python3-venv python3-dev g++ make cmake git ca-certificates"
common_runtime="python3 python3-venv openssh-server openssh-client libnss-wrapper iproute2 procps ca-certificates"
if [ "$stage" = build ]; then
    packages="$common_build $BUILD_PACKAGES"
else
    packages="$common_runtime $RUNTIME_PACKAGES"
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086  # word splitting of the package lists is intended
apt-get install -y -q --no-install-recommends $packages ||
    fail "installing $packages failed: the base image's archive must provide them (BASE=Debian 12 / Ubuntu 24.04)"
rm -rf /var/lib/apt/lists/*
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    fail "the base image's python3 is $(python3 -V 2>&1); mpirt needs Python >= 3.11 (Debian 12, Ubuntu 24.04)"
mkdir -p /opt/mpi  # where a flavour built from source installs (empty otherwise)
# How the core finds its MPI (build_support/mpi_choice.py): the system's, or a wheel's.
echo "${MPIRT_MPI_CHOICE:-system}" > "$here/mpi-choice"
flavour_setup
