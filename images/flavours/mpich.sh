# MPICH from PyPI's mpich wheel (5.x: ch4 with UCX and libfabric, Hydra), installed into the
# venv from the wheelhouse. Debian 12's own MPICH 4.0.2 can hang in MPI_Finalize across hosts
# (pmodels/mpich#6596, fixed in 4.2), so the image does not use it. Sourced by images/install.sh.
BUILD_PACKAGES=""
RUNTIME_PACKAGES=""
MPIRT_MPI_CHOICE=mpich
flavour_setup() { :; }
