# Open MPI from the base distribution (Debian 12: 4.1.4). Sourced by images/install.sh.
BUILD_PACKAGES="libopenmpi-dev openmpi-bin"
RUNTIME_PACKAGES="openmpi-bin libopenmpi3"
# Open MPI 4 uses ssh via orte; mpirt launch sets the rest (plm_rsh_args, --allow-run-as-root).
flavour_setup() { :; }
