"""PowerSGD gradient compression (Vogels, Karimireddy and Jaggi, NeurIPS 2019; the scheme of
torch's ``powerSGD_hook``) for the data-parallel runtime: on a slow network (the TCP tier)
it cuts what a step sends by one or two orders of magnitude.

Each gradient of two or more dimensions is seen as a matrix M (n rows, the rest as m columns)
and sent as two thin factors, P (n x r) and Q (m x r), when that at least halves its size;
other gradients (biases, norms, small matrices) are averaged as they are. Per bucket and step:

1. M += e, the error this rank's earlier approximations left out (error feedback);
2. P = M Q, with last step's averaged Q (warm start); average [P, the other gradients];
3. orthonormalise P, identically on every rank (an allreduce gives every rank the same bits);
4. Q = Mᵀ P; average Q;
5. the gradient becomes P Qᵀ, the rank-r approximation of the averaged M; e = M - P Qᵀ.

Two allreduces of about r(n+m) numbers replace one of n·m. The first ``start`` steps average
exactly (PowerSGD early in training costs accuracy). The errors and Q factors live with the
runtime, not in checkpoints: a resumed run starts them afresh, as torch's hook does.
"""

from __future__ import annotations

from typing import Callable

import torch

MIN_COMPRESSION = 2.0  # compress a matrix only when the factors are at most half its size


def initial_q(m: int, r: int, seed: int) -> torch.Tensor:
    """The first Q of a matrix: seeded, so the same on every rank, with orthonormal columns."""
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64)).Q


def shape_of(t: torch.Tensor, rank: int) -> tuple[int, int, int] | None:
    """(n, m, r) when ``t`` is compressed at ``rank``, else None."""
    if t.dim() < 2 or t.numel() == 0:
        return None
    n = t.shape[0]
    m = t.numel() // n
    r = min(rank, n, m)
    return (n, m, r) if n * m >= MIN_COMPRESSION * r * (n + m) else None


class BucketCompressor:
    """PowerSGD state of one bucket: which of its gradients are compressed, their errors and Q
    factors, and the two wire buffers."""

    def __init__(self, views: list[torch.Tensor], rank: int, seed: int):
        self.views = views
        dtype, device = views[0].dtype, views[0].device
        self.matrices = []  # (view index, n, m, P view, Q transposed (r x m: the fast layout for both products), error)
        self.plain = []  # (view index, slice of the first wire buffer)
        shapes = [shape_of(v, rank) for v in views]
        factors = [s for s in shapes if s is not None]
        p_total, q_total = sum(n * r for n, _, r in factors), sum(m * r for _, m, r in factors)
        u_total = sum(v.numel() for v, s in zip(views, shapes) if s is None)
        self.first = torch.zeros(u_total + p_total, dtype=dtype, device=device)
        self.second = torch.zeros(q_total, dtype=dtype, device=device)
        uoff, poff, qoff = 0, u_total, 0
        for i, (v, s) in enumerate(zip(views, shapes)):
            if s is None:
                self.plain.append((i, self.first[uoff:uoff + v.numel()]))
                uoff += v.numel()
                continue
            n, m, r = s
            p = self.first[poff:poff + n * r].view(n, r)
            q = self.second[qoff:qoff + m * r].view(r, m)
            q.copy_(initial_q(m, r, seed * 1000 + i).t())
            self.matrices.append((i, n, m, p, q, torch.zeros(n, m, dtype=dtype, device=device)))
            poff, qoff = poff + n * r, qoff + m * r

    @property
    def wire_numel(self) -> int:
        return self.first.numel() + self.second.numel()

    def reduce(self, allreduce: Callable[[torch.Tensor, str], None]) -> None:
        """Average this bucket's gradients (its views) as PowerSGD does; ``allreduce(t, op)``
        reduces a tensor in place across the ranks."""
        for i, flat in self.plain:
            flat.copy_(self.views[i].reshape(-1))
        for i, n, m, p, q, err in self.matrices:
            mat = self.views[i].view(n, m)
            mat.add_(err)
            torch.matmul(mat, q.t(), out=p)
        allreduce(self.first, "avg")  # P is orthonormalised next, so averaging it loses nothing
        for i, flat in self.plain:
            self.views[i].view(-1).copy_(flat)
        for i, n, m, p, q, err in self.matrices:
            p.copy_(torch.linalg.qr(p).Q)
            torch.matmul(p.t(), self.views[i].view(n, m), out=q)
        allreduce(self.second, "avg")
        for i, n, m, p, q, err in self.matrices:  # two passes over the matrix, no temporary
            mat = self.views[i].view(n, m)
            torch.addmm(mat, p, q, alpha=-1, out=err)
            torch.mm(p, q, out=mat)
