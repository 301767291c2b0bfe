// `mpi`: MPI_Allreduce itself, the baseline every other algorithm is measured against.
#include <algorithm>
#include <array>
#include <climits>

#include "allreduce.hpp"

namespace mpirt {
namespace {

template <DType T, Op O>
void user_op(void* in, void* inout, int* len, MPI_Datatype*) {
  reduce_into(inout, in, static_cast<size_t>(*len), T, O);
}

MPI_Op half_op(DType t, Op o) {
  // MPI has no portable 16-bit float type: reduce them as uint16 bits with our own op. Made
  // once, on first use (a static initialiser: safe when two threads reduce at once).
  static const auto ops = [] {
    MPI_User_function* fns[2][3] = {
        {user_op<DType::f16, Op::sum>, user_op<DType::f16, Op::min>, user_op<DType::f16, Op::max>},
        {user_op<DType::bf16, Op::sum>, user_op<DType::bf16, Op::min>, user_op<DType::bf16, Op::max>}};
    std::array<std::array<MPI_Op, 3>, 2> made{};
    for (int ti = 0; ti < 2; ++ti)
      for (int oi = 0; oi < 3; ++oi) MPI_Op_create(fns[ti][oi], 1, &made[ti][oi]);
    return made;
  }();
  return ops[t == DType::f16 ? 0 : 1][o == Op::avg ? 0 : static_cast<int>(o)];
}

}  // namespace

void mpi_type_op(DType t, Op o, MPI_Datatype* type, MPI_Op* op) {
  switch (t) {
    case DType::f32: *type = MPI_FLOAT; break;
    case DType::f64: *type = MPI_DOUBLE; break;
    case DType::i32: *type = MPI_INT32_T; break;
    case DType::f16:
    case DType::bf16:
      *type = MPI_UINT16_T;
      *op = half_op(t, o);
      return;
  }
  switch (o) {
    case Op::sum:
    case Op::avg: *op = MPI_SUM; break;
    case Op::min: *op = MPI_MIN; break;
    case Op::max: *op = MPI_MAX; break;
  }
}

void allreduce_mpi(const Call& c) {
  MPI_Datatype type;
  MPI_Op op;
  mpi_type_op(c.dtype, c.op, &type, &op);
  const size_t esize = dtype_size(c.dtype);
  const size_t step = INT_MAX / 2;  // MPI counts are int: split huge buffers
  const bool inplace = c.send == c.recv;
  for (size_t off = 0; off < c.count; off += step) {
    const int n = static_cast<int>(std::min(step, c.count - off));
    char* recv = static_cast<char*>(c.recv) + off * esize;
    const void* send = inplace ? MPI_IN_PLACE : static_cast<const char*>(c.send) + off * esize;
    MPI_Allreduce(send, recv, n, type, op, c.comm);
  }
  if (c.op == Op::avg) {
    int size;
    MPI_Comm_size(c.comm, &size);
    scale_avg(c.recv, c.count, c.dtype, size);
  }
}

}  // namespace mpirt
