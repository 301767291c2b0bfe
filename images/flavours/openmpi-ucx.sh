# Open MPI over UCX, both built from source into /opt/mpi: the MPI of GPU and InfiniBand images.
# UCX gets verbs and rdmacm (InfiniBand, RoCE) and thread support (mpirt's gradient thread).
# When the base has CUDA (nvcc under CUDA_HOME, default /usr/local/cuda) both are configured
# --with-cuda: Open MPI then hands device pointers to UCX, so UCX must carry its cuda transports
# (Debian's libucx has none; a CUDA-aware Open MPI over it would read device memory as host memory).
# OMPI_SOURCE / UCX_SOURCE: a URL, or the name of a tarball in images/sources/. The defaults are
# Open MPI 4.1.4 and UCX 1.13.1 from Debian's archive (reachable where GitHub may not be); point
# them at the releases you want. Sourced by images/install.sh.
BUILD_PACKAGES="libnuma-dev libibverbs-dev librdmacm-dev autoconf automake libtool pkg-config curl xz-utils bzip2 file"
RUNTIME_PACKAGES="libnuma1 libibverbs1 ibverbs-providers librdmacm1"
OMPI_SOURCE=${OMPI_SOURCE:-http://deb.debian.org/debian/pool/main/o/openmpi/openmpi_4.1.4.orig.tar.xz}
UCX_SOURCE=${UCX_SOURCE:-http://deb.debian.org/debian/pool/main/u/ucx/ucx_1.13.1.orig.tar.xz}

# unpack NAME SOURCE DIR: the tarball SOURCE (a URL or a file in images/sources/) into DIR
unpack() {
    local name=$1 source=$2 dir=$3
    mkdir -p "$dir"
    case $source in
        http://* | https://*) curl -fsSL "$source" -o "$dir.tar" ||
            fail "cannot download $name=$source: give a reachable URL or a tarball in images/sources/" ;;
        *) [ -f "$here/sources/$source" ] ||
            fail "$name=$source is neither a URL nor a file in images/sources/"
           cp "$here/sources/$source" "$dir.tar" ;;
    esac
    tar -xf "$dir.tar" -C "$dir" --strip-components=1 || fail "$name=$source is not a source tarball"
}

# configure_in DIR LOG ARGS...: configure a release tarball, or a git snapshot after autogen.sh.
# Debian's UCX snapshot keeps upstream's debian/ (which configure.ac lists) as debian.upstream/.
configure_in() {
    local dir=$1 log=$2
    shift 2
    (cd "$dir" &&
        { [ -x configure ] || { { [ -d debian ] || [ ! -d debian.upstream ] || cp -r debian.upstream debian; } &&
                                ./autogen.sh > "$log" 2>&1; }; } &&
        ./configure --prefix=/opt/mpi "$@" >> "$log" 2>&1) ||
        { tail -30 "$log"; fail "configuring $dir failed (log above)"; }
}

# make_install WHAT LOG DIR...: build and install each DIR in turn
make_install() {
    local what=$1 log=$2 dir
    shift 2
    for dir in "$@"; do
        { make -C "$dir" -j"$(nproc)" >> "$log" 2>&1 && make -C "$dir" install >> "$log" 2>&1; } ||
            { tail -30 "$log"; fail "$what build failed in $dir (log above)"; }
    done
}

flavour_setup() {
    echo /opt/mpi/lib > /etc/ld.so.conf.d/mpirt-mpi.conf
    [ "$stage" = build ] || return 0
    local work cuda="${CUDA_HOME:-/usr/local/cuda}" with_cuda=()
    work=$(mktemp -d)
    [ -x "$cuda/bin/nvcc" ] && with_cuda=(--with-cuda="$cuda")
    unpack UCX_SOURCE "$UCX_SOURCE" "$work/ucx"
    configure_in "$work/ucx" "$work/ucx.log" --enable-mt --disable-logging --disable-debug --disable-assertions \
        --disable-params-check --without-java --without-go --with-verbs --with-rdmacm "${with_cuda[@]}"
    # The libraries, ucx_info and ucx_perftest; not the test programs, some of which do not
    # compile against newer CUDA headers (CUDA 13's cuCtxCreate) while the libraries do.
    local u="$work/ucx"
    make_install UCX "$work/ucx.log" "$u/src/ucm" "$u/src/ucs" "$u/src/uct" "$u/src/ucp" "$u/src/tools/info" \
        "$u/src/tools/perf" "$u/cmake"
    make -C "$u" install-pkgconfigDATA >> "$work/ucx.log" 2>&1 || fail "installing UCX's pkg-config file failed"
    if [ ${#with_cuda[@]} -gt 0 ] && [ ! -e /opt/mpi/lib/ucx/libuct_cuda.so ]; then
        grep -i cuda "$u/config.log" | tail -10
        fail "UCX was built without its cuda transports: its configure needs cuda.h, nvml.h and libcuda/libnvidia-ml (or their stubs in $cuda/lib64/stubs): build FROM a CUDA *devel* image"
    fi
    unpack OMPI_SOURCE "$OMPI_SOURCE" "$work/ompi"
    configure_in "$work/ompi" "$work/ompi.log" --with-ucx=/opt/mpi --disable-mpi-fortran \
        --enable-mca-no-build=btl-uct "${with_cuda[@]}"
    make_install "Open MPI" "$work/ompi.log" "$work/ompi"
    ldconfig
    /opt/mpi/bin/ompi_info | grep -q "MCA pml: ucx" ||
        { grep -i ucx "$work/ompi/config.log" | tail -10; fail "Open MPI was built without its UCX pml (log above)"; }
    rm -rf "$work"
}
