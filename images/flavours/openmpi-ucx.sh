# Open MPI built from source with UCX (the distribution's) and, when the base has CUDA (nvcc
# under CUDA_HOME, default /usr/local/cuda), CUDA support: the MPI of GPU images, CUDA-aware.
# OMPI_SOURCE: a URL, or the name of a tarball in images/sources/. The default is Open MPI 4.1.4
# from Debian's archive (reachable where open-mpi.org may not be); point it at the release you want.
BUILD_PACKAGES="libucx-dev libnuma-dev curl xz-utils bzip2 file"
RUNTIME_PACKAGES="libucx0 ucx-utils libnuma1"
OMPI_SOURCE=${OMPI_SOURCE:-http://deb.debian.org/debian/pool/main/o/openmpi/openmpi_4.1.4.orig.tar.xz}

flavour_setup() {
    echo /opt/mpi/lib > /etc/ld.so.conf.d/mpirt-mpi.conf
    [ "$stage" = build ] || return 0
    local work cuda="${CUDA_HOME:-/usr/local/cuda}" with_cuda=()
    work=$(mktemp -d)
    case $OMPI_SOURCE in
        http://* | https://*) curl -fsSL "$OMPI_SOURCE" -o "$work/src.tar" ||
            fail "cannot download OMPI_SOURCE=$OMPI_SOURCE: give a reachable URL or a tarball in images/sources/" ;;
        *) [ -f "$here/sources/$OMPI_SOURCE" ] ||
            fail "OMPI_SOURCE=$OMPI_SOURCE is neither a URL nor a file in images/sources/"
           cp "$here/sources/$OMPI_SOURCE" "$work/src.tar" ;;
    esac
    tar -xf "$work/src.tar" -C "$work"
    [ -x "$cuda/bin/nvcc" ] && with_cuda=(--with-cuda="$cuda")
    (cd "$work"/openmpi-* &&
        ./configure --prefix=/opt/mpi --with-ucx=/usr --disable-mpi-fortran --enable-mca-no-build=btl-uct \
            "${with_cuda[@]}" > "$work/configure.log" 2>&1 ||
            { tail -30 "$work/configure.log"; fail "Open MPI configure failed (log above)"; }
        make -j"$(nproc)" install > "$work/make.log" 2>&1 ||
            { tail -30 "$work/make.log"; fail "Open MPI build failed (log above)"; })
    ldconfig
    rm -rf "$work"
}
