"""The pod entrypoint: runs once per pod, before and around mpirun. Never imports mpi4py.MPI."""
