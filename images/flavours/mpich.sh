# MPICH from the base distribution (Debian 12: 4.0.2). Sourced by images/install.sh.
BUILD_PACKAGES="libmpich-dev mpich"
RUNTIME_PACKAGES="mpich libmpich12"
# mpi4py's wheel loads the MPICH ABI as libmpi.so.12; Debian names it libmpich.so.12.
flavour_setup() {
    local lib
    lib=$(find /usr/lib -name 'libmpich.so.12' -print -quit)
    [ -n "$lib" ] || { echo "mpich flavour: libmpich.so.12 not found after install" >&2; exit 1; }
    ln -sf "$lib" "$(dirname "$lib")/libmpi.so.12"
    update-alternatives --set mpirun /usr/bin/mpirun.mpich 2>/dev/null || true
}
