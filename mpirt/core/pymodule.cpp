// mpirt._core: the Python face of the core. It takes raw addresses and a Fortran
// communicator handle (mpi4py's Comm.py2f()) so it needs neither numpy nor mpi4py headers;
// mpirt/core.py turns arrays and tensors into those arguments.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdexcept>
#include <string>

#include "allreduce.hpp"
#include "comm_state.hpp"
#include "memops.hpp"

namespace {

using namespace mpirt;

// Runs `body` without the GIL (it may wait for other ranks); a C++ exception becomes ValueError
// (bad input) or RuntimeError, with its message.
template <class F>
bool without_gil(F body) {
  std::string error;
  bool invalid = false;
  Py_BEGIN_ALLOW_THREADS;
  try {
    body();
  } catch (const std::invalid_argument& e) {
    error = e.what();
    invalid = true;
  } catch (const std::exception& e) {
    error = e.what();
  }
  Py_END_ALLOW_THREADS;
  if (!error.empty()) PyErr_SetString(invalid ? PyExc_ValueError : PyExc_RuntimeError, error.c_str());
  return error.empty();
}

PyObject* py_allreduce(PyObject*, PyObject* args) {
  long long fcomm;
  unsigned long long send, recv, count;
  const char *dtype_s, *op_s, *algo_s, *device_s;
  if (!PyArg_ParseTuple(args, "LKKKssss", &fcomm, &send, &recv, &count, &dtype_s, &op_s, &algo_s, &device_s))
    return nullptr;
  DType dtype;
  Op op;
  Algo algo;
  if (!parse_dtype(dtype_s, &dtype))
    return PyErr_Format(PyExc_ValueError, "unknown dtype '%s': use float32, float64, float16, bfloat16 or int32", dtype_s);
  if (!parse_op(op_s, &op)) return PyErr_Format(PyExc_ValueError, "unknown op '%s': use sum, min, max or avg", op_s);
  if (!parse_algo(algo_s, &algo))
    return PyErr_Format(PyExc_ValueError, "unknown algorithm '%s': use mpi, ring, shm, auto, ordered or hier", algo_s);
  // "cpu", "cuda" (the calling thread's current device) or "cuda:N", as torch writes a device
  const std::string dev(device_s);
  int device_index = -1;
  const bool cuda = dev == "cuda" || dev.rfind("cuda:", 0) == 0;
  if (dev.rfind("cuda:", 0) == 0) {
    const std::string digits = dev.substr(5);
    if (digits.empty() || digits.size() > 4 || digits.find_first_not_of("0123456789") != std::string::npos)
      return PyErr_Format(PyExc_ValueError, "unknown device '%s': use cpu, cuda or cuda:N", device_s);
    device_index = std::stoi(digits);
  }
  if (!cuda && dev != "cpu")
    return PyErr_Format(PyExc_ValueError, "unknown device '%s': use cpu, cuda or cuda:N", device_s);
  Call call{reinterpret_cast<const void*>(send), reinterpret_cast<void*>(recv), static_cast<size_t>(count), dtype, op,
            MPI_COMM_NULL};
  Algo used = algo;
  int initialized = 0, finalized = 0;  // here, not on the core's path: two locks a call in Open MPI 4
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized)
    return PyErr_Format(PyExc_RuntimeError, "MPI is not initialised: import mpi4py.MPI (or call MPI_Init) first");
  if (!without_gil([&] {
        call.comm = MPI_Comm_f2c(static_cast<MPI_Fint>(fcomm));
        used = allreduce(call, algo, cuda ? Device::cuda : Device::cpu, device_index);
      }))
    return nullptr;
  return PyUnicode_FromString(algorithm(used).name);
}

PyObject* py_shared_alloc(PyObject*, PyObject* args) {
  long long fcomm;
  unsigned long long bytes;
  if (!PyArg_ParseTuple(args, "LK", &fcomm, &bytes)) return nullptr;
  void* p = nullptr;
  if (!without_gil([&] { p = shared_alloc(MPI_Comm_f2c(static_cast<MPI_Fint>(fcomm)), static_cast<size_t>(bytes)); }))
    return nullptr;
  return PyMemoryView_FromMemory(static_cast<char*>(p), static_cast<Py_ssize_t>(bytes), PyBUF_WRITE);
}

PyObject* py_shared_free(PyObject*, PyObject* args) {
  long long fcomm;
  unsigned long long addr;
  if (!PyArg_ParseTuple(args, "LK", &fcomm, &addr)) return nullptr;
  if (!without_gil([&] { shared_free(MPI_Comm_f2c(static_cast<MPI_Fint>(fcomm)), reinterpret_cast<void*>(addr)); }))
    return nullptr;
  Py_RETURN_NONE;
}

PyObject* py_info(PyObject*, PyObject*) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  PyObject* algos = PyList_New(0);
  for (const auto& p : algorithms()) {
    PyObject* name = PyUnicode_FromString(p.name);
    PyList_Append(algos, name);
    Py_DECREF(name);
  }
  PyObject* d = Py_BuildValue("{s:s,s:O,s:O,s:N}", "mpi_library",
                              initialized ? mpi_library_version().c_str() : "", "cuda_aware",
                              initialized && mpi_cuda_aware() ? Py_True : Py_False, "cuda_built",
                              cuda::built() ? Py_True : Py_False, "algorithms", algos);
  return d;
}

PyObject* py_release(PyObject*, PyObject*) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (initialized && !finalized) {
    Py_BEGIN_ALLOW_THREADS;
    release_all();
    Py_END_ALLOW_THREADS;
  }
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"allreduce", py_allreduce, METH_VARARGS,
     "allreduce(fcomm, send_addr, recv_addr, count, dtype, op, algo, device) -> algorithm used"},
    {"shared_alloc", py_shared_alloc, METH_VARARGS,
     "shared_alloc(fcomm, bytes) -> writable memoryview of a buffer the node's ranks share (collective)"},
    {"shared_free", py_shared_free, METH_VARARGS, "shared_free(fcomm, addr): free a shared buffer (collective)"},
    {"info", py_info, METH_NOARGS, "build and MPI facts of the core"},
    {"release", py_release, METH_NOARGS, "free the core's per-communicator state before MPI_Finalize"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_core", "mpirt compiled collective core", -1, methods,
                      nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__core() { return PyModule_Create(&module); }
