#!/bin/bash
# Makes the default base image where no registry can be reached: a Debian 12 minbase root
# filesystem from debootstrap, imported into podman under the name the Containerfile uses.
# Usage: images/base.sh [NAME]   (needs root, debootstrap, podman)
set -euo pipefail
name=${1:-docker.io/library/debian:bookworm-slim}
if podman image exists "$name"; then
    echo "base image $name: present"
    exit 0
fi
root=$(mktemp -d /var/tmp/mpirt-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$name"
echo "base image $name: made from debootstrap"
