// Large float32 matrix products on the CPU through a BLAS sgemm, as an XLA FFI custom call.
//
//   vj_gemm_f32:  a, b f32 -> c (..., M, N) f32,  c = op(a) @ op(b)
//                 op(a) = a (..., M, K), or a^T with a stored (..., K, M) when trans_a;
//                 op(b) = b (..., K, N), or b^T with b stored (..., N, K) when trans_b;
//                 the leading (batch) dims of a, b and c equal, one sgemm per batch entry.
//
// Why: XLA:CPU's GEMM (Eigen) runs the products of prefill and training (thousands of rows) at 90-110
// GFLOP/s on a 2-core Zen 3 VM, where the OpenBLAS build that numpy ships reaches 140-155 on the same
// shapes. The transposed forms are the gradients' products (dx = dy w^T, dw = x^T dy) and attention's
// q k^T, taken by sgemm's own flags so no transposed copy is made. Batched, it runs attention's products,
// which XLA:CPU otherwise fuses with the softmax into a loop that recomputes it (2x their time).
//
// The sgemm is not linked: Python hands over the address of the CBLAS entry point it found (numpy's
// OpenBLAS, 64-bit integers) through vj_gemm_set_sgemm before the target is registered.
#include <cstdint>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// cblas_sgemm with 64-bit integers (OpenBLAS's INTERFACE64 build, numpy's).
using Sgemm64 = void (*)(int order, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha,
                         const float* a, int64_t lda, const float* b, int64_t ldb, float beta, float* c,
                         int64_t ldc);
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

Sgemm64 g_sgemm = nullptr;

ffi::Error Gemm(ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> c, bool trans_a,
                bool trans_b) {
  if (g_sgemm == nullptr) return ffi::Error::Internal("vj_gemm_f32: no sgemm set");
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  const size_t r = ad.size();
  if (r < 2 || bd.size() != r || cd.size() != r) return ffi::Error::InvalidArgument("vj_gemm_f32: ranks differ");
  int64_t batch = 1;
  for (size_t i = 0; i + 2 < r; ++i) {
    if (ad[i] != bd[i] || ad[i] != cd[i]) return ffi::Error::InvalidArgument("vj_gemm_f32: batch dims differ");
    batch *= ad[i];
  }
  const int64_t a0 = ad[r - 2], a1 = ad[r - 1], b0 = bd[r - 2], b1 = bd[r - 1];
  const int64_t m = trans_a ? a1 : a0, k = trans_a ? a0 : a1;
  const int64_t n = trans_b ? b0 : b1, kb = trans_b ? b1 : b0;
  if (k != kb) return ffi::Error::InvalidArgument("vj_gemm_f32: inner dimensions differ");
  if (cd[r - 2] != m || cd[r - 1] != n) return ffi::Error::InvalidArgument("vj_gemm_f32: bad output shape");
  if (m == 0 || n == 0) return ffi::Error::Success();
  const float* ap = a.typed_data();
  const float* bp = b.typed_data();
  float* cp = c->typed_data();
  for (int64_t i = 0; i < batch; ++i) {
    g_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f, ap + i * a0 * a1,
            a1, bp + i * b0 * b1, b1, 0.0f, cp + i * m * n, n);
  }
  return ffi::Error::Success();
}

}  // namespace

extern "C" void vj_gemm_set_sgemm(void* fn) { g_sgemm = reinterpret_cast<Sgemm64>(fn); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(vj_gemm_f32, Gemm,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
