"""Float32 matrix products through BLAS's sgemm on the CPU, with their gradients.

    matmul(a, b, trans_a=False, trans_b=False) -> op(a) (..., M, K) @ op(b) (..., K, N) = (..., M, N)
    usable(x, macs) -> whether a product of `macs` multiply-adds with an operand like x takes this road
                       (one CPU device, float32, sgemm found, at least MIN_MACS of work)

`op(a)` is `a`, or its last two dims swapped when `trans_a` (a stored (..., K, M)); likewise `b`. The
product is the custom call of kernels/gemm.cc (numpy's OpenBLAS); its gradient is two more of them, the
transposes taken by sgemm's flags, never by a copy:

    c = op(a) op(b):   d op(a) = dc op(b)^T,   d op(b) = op(a)^T dc

Why: on the CPU the products of prefill and training (thousands of rows) run 1.2-1.6x faster through
OpenBLAS than through XLA's GEMM, and attention's batched products 1.6-1.8x: XLA fuses the softmax into
the probabilities' product and recomputes it there (benchmarks/README.md). `linear.dot` and
`attention.dot_product_attention` take this road where `usable` says so, and keep XLA's otherwise (GPU,
TPU, bfloat16, several devices: a custom call is not partitioned, XLA would gather its operands; small
products, where XLA's fusions of the ops around a product and the BLAS threads' wake-up outweigh the
faster GEMM: the demo's width-64 train step was 1.5x slower with every product on BLAS).
"""
from functools import partial

import jax

from vllama_jax import kernels


# Multiply-adds of one call (all its batch entries) from which BLAS pays: a ViT-B/14 tower's products
# (10^8-10^10) take it, the demo's width-64 decoder's (~7 x 10^7 at 16 x 264 positions) do not.
MIN_MACS = 1 << 27


def usable(x, macs: int) -> bool:
    return macs >= MIN_MACS and kernels.gemm_usable(x)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def matmul(a, b, trans_a: bool = False, trans_b: bool = False):
    return kernels.gemm(a, b, trans_a, trans_b)


def _matmul_fwd(a, b, trans_a, trans_b):
    return kernels.gemm(a, b, trans_a, trans_b), (a, b)


def _matmul_bwd(trans_a, trans_b, saved, dc):
    a, b = saved
    if trans_a:  # a is op(a)^T: its gradient is (dc op(b)^T)^T = op(b) dc^T
        da = kernels.gemm(b, dc, trans_b, True)
    else:
        da = kernels.gemm(dc, b, False, not trans_b)
    if trans_b:  # b is op(b)^T: (op(a)^T dc)^T = dc^T op(a)
        db = kernels.gemm(dc, a, True, trans_a)
    else:
        db = kernels.gemm(a, dc, not trans_a, False)
    return da, db


matmul.defvjp(_matmul_fwd, _matmul_bwd)
