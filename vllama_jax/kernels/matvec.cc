// Memory-bound matrix products of decoding on the CPU, as XLA FFI custom calls.
//
//   vj_matvec_f32:  x (M, K) f32, w (..., K, N) f32                     -> y (M, N) f32
//   vj_matvec_s8:   x (M, K) f32, w (..., K, N) int8, scale (..., N) f32 -> y (M, N) f32
//                   y[m, n] = scale[n] * sum_k x[m, k] * w[k, n]   (int8 weights, per-output-channel scale)
//
//   vj_matvec_packed_f32:  x (M, K) f32, w (..., S, K, 32) f32                      -> y (M, 32 S) f32
//   vj_matvec_packed_s8:   x (M, K) f32, w (..., S, K, 32) int8, scale (..., 32 S) f32 -> y (M, 32 S) f32
//                   the same products on weights packed in strips (layers/packed.py): strip s holds columns
//                   [32 s, 32 s + 32) of all K rows, row after row, so a strip is one contiguous run of memory
//
// Attribute `layer` (int64): which (K, N) matrix of a stacked (L, K, N) weight to use, by offset, so a
// decoder's stacked layer weights are read in place (an XLA slice of them would be a copy per step).
//
// Why: at decode time M (the batch) is 1..8, so a step is one pass over the weights. XLA's CPU dot reaches
// about half the memory bandwidth there and its int8 -> f32 convert + dot is slower than float32. This
// kernel streams the weights once, in contiguous row blocks, on XLA's own intra-op thread pool.
//
// Work split (row-major weights): the K rows are cut into C blocks (contiguous memory); block c accumulates
// its partial product into its own (M, N) buffer; the C partials are then summed in block order (in
// parallel over N). Which thread runs which block does not change any sum, so results are deterministic.
// Packed weights: each task takes whole strips and sums every k of a strip in order, in registers; each
// thread reads one contiguous stream, which the hardware prefetcher follows at the memory's full rate (the
// row-major loop reads a chunk's rows as many interleaved streams: a 374M decode step's products 35 ->
// 27 ms at 1 row, 42 -> 32 ms at 8, AVX-512 VM, 2026-11-28).
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs fn(i) for i in [0, n) on the pool and the calling thread; returns when all are done. The caller
// takes tasks too, and only waits for tasks already started elsewhere, so a busy pool cannot deadlock it.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t n, F fn) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto st = std::make_shared<State>();
  auto work = [st, n, fn]() {
    for (int64_t i; (i = st->next.fetch_add(1)) < n;) {
      fn(i);
      if (st->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(st->mu);
        st->cv.notify_all();
      }
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n - 1);
  for (int64_t t = 0; t < helpers; ++t) {
    auto task = work;  // each scheduled task owns a copy (Schedule takes it by value)
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(st->mu);
  st->cv.wait(lock, [&] { return st->done.load() == n; });
}

inline float AsFloat(float v) { return v; }
inline float AsFloat(int8_t v) { return static_cast<float>(v); }

#if defined(__AVX2__) && defined(__FMA__)
// Eight weights from p, as floats.
inline __m256 Load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 Load8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
#endif

// Portable path (no AVX-512): acc (MB, N) += x[:, k0:k1] @ w[k0:k1, :], four weight rows at a time (each
// acc row is loaded and stored once per four rows; each weight element is loaded once and used MB times).
template <int MB, typename W>
void AccumulateRows(const float* __restrict x, int64_t K, const W* __restrict w, int64_t N, int64_t k0,
                    int64_t k1, float* __restrict acc) {
  int64_t k = k0;
  for (; k + 4 <= k1; k += 4) {
    const W* __restrict w0 = w + k * N;
    const W* __restrict w1 = w0 + N;
    const W* __restrict w2 = w1 + N;
    const W* __restrict w3 = w2 + N;
    float c[MB][4];
    for (int m = 0; m < MB; ++m)
      for (int r = 0; r < 4; ++r) c[m][r] = x[m * K + k + r];
    int64_t n = 0;
#if defined(__AVX2__) && defined(__FMA__)
    // int8 weights by hand on AVX2 (the same sums in the same order): GCC widens them through 16-bit lanes
    // with many shuffles, which made int8 compute-bound; one sign-extending load converts eight. Float32
    // weights stay with the compiler's loop below, which already streams at the memory bandwidth.
    for (; sizeof(W) == 1 && n + 8 <= N; n += 8) {
      const __m256 a0 = Load8(w0 + n), a1 = Load8(w1 + n), a2 = Load8(w2 + n), a3 = Load8(w3 + n);
      for (int m = 0; m < MB; ++m) {
        __m256 t = _mm256_mul_ps(_mm256_set1_ps(c[m][0]), a0);
        t = _mm256_fmadd_ps(_mm256_set1_ps(c[m][1]), a1, t);
        t = _mm256_fmadd_ps(_mm256_set1_ps(c[m][2]), a2, t);
        t = _mm256_fmadd_ps(_mm256_set1_ps(c[m][3]), a3, t);
        _mm256_storeu_ps(acc + m * N + n, _mm256_add_ps(_mm256_loadu_ps(acc + m * N + n), t));
      }
    }
#endif
#pragma GCC ivdep
    for (; n < N; ++n) {
      float a0 = AsFloat(w0[n]), a1 = AsFloat(w1[n]), a2 = AsFloat(w2[n]), a3 = AsFloat(w3[n]);
      for (int m = 0; m < MB; ++m)
        acc[m * N + n] += c[m][0] * a0 + c[m][1] * a1 + c[m][2] * a2 + c[m][3] * a3;
    }
  }
  for (; k < k1; ++k) {
    const W* __restrict w0 = w + k * N;
    for (int m = 0; m < MB; ++m) {
      float c0 = x[m * K + k];
#pragma GCC ivdep
      for (int64_t n = 0; n < N; ++n) acc[m * N + n] += c0 * AsFloat(w0[n]);
    }
  }
}

#ifdef __AVX512F__
// On AVX-512, by hand: GCC's own vectorisation of the loop above keeps the accumulators in memory (a load
// and a store per four weight rows, which made batch 8 compute-bound at half the bandwidth) and widens
// int8 weights through 16-bit lanes with many shuffles.

// 16 weights of row `row` from column n, as floats.
inline __m512 LoadW(const float* row, int64_t n) { return _mm512_loadu_ps(row + n); }
inline __m512 LoadW(const int8_t* row, int64_t n) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + n))));
}

// acc[:MB, n:n+16*J] += x[:MB, k0:k1] @ w[k0:k1, n:n+16*J], the MB x J accumulators held in registers
// over all k0..k1 rows (a chunk of a few rows, so the acc memory is read and written once per chunk; each
// weight vector is loaded once and used for MB rows of x).
template <int MB, int J, typename W, int64_t PF = 4 * 32 * 4 / sizeof(W)>
inline void Strip(const float* __restrict x, int64_t K, const W* __restrict w, int64_t N, int64_t k0, int64_t k1,
                  int64_t n, float* __restrict acc) {
  __m512 s[MB][J];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < J; ++j) s[m][j] = _mm512_loadu_ps(acc + m * N + n + 16 * j);
  for (int64_t k = k0; k < k1; ++k) {
    const W* row = w + k * N;
    // A chunk's strips read its rows at a stride of N: too many streams, often 4 KiB apart, for the
    // hardware prefetcher, so ask for this row's bytes PF weights (four strips) ahead.
    _mm_prefetch(reinterpret_cast<const char*>(row + n + PF), _MM_HINT_T0);
    if (sizeof(W) * 16 * J > 64) _mm_prefetch(reinterpret_cast<const char*>(row + n + PF) + 64, _MM_HINT_T0);
    __m512 a[J];
    for (int j = 0; j < J; ++j) a[j] = LoadW(row, n + 16 * j);
    for (int m = 0; m < MB; ++m) {
      const __m512 c = _mm512_set1_ps(x[m * K + k]);
      for (int j = 0; j < J; ++j) s[m][j] = _mm512_fmadd_ps(c, a[j], s[m][j]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < J; ++j) _mm512_storeu_ps(acc + m * N + n + 16 * j, s[m][j]);
}

// acc (MB, N) += x[:, k0:k1] @ w[k0:k1, :] for MB <= 8 rows of x, in chunks of ROWS weight rows: each chunk is
// swept in strips of 32 columns (16 accumulators for MB = 8, within AVX-512's 32 registers), so every weight
// is read from memory once for all MB rows and the accumulators go to memory once per chunk.
template <int MB, typename W>
void AccumulateRowsAvx512(const float* __restrict x, int64_t K, const W* __restrict w, int64_t N, int64_t k0,
                          int64_t k1, float* __restrict acc) {
  // A full group of 8 rows keeps its 16 accumulators over longer chunks (up to the caller's sub-block): it
  // does 8x the arithmetic per weight, so the accumulators' loads and stores at each chunk's end cost more
  // of its time (374M step, AVX-512 VM: int8 8 rows 23-24 -> 19-20 ms, float32 8 rows 3-5 % less, same
  // sums). Fewer rows keep short chunks: longer ones slowed int8 2 rows by 10 %.
  constexpr int64_t ROWS = MB >= 8 ? 128 : 16;
  const int64_t n32 = N / 32 * 32, n16 = N / 16 * 16;
  for (int64_t c0 = k0; c0 < k1; c0 += ROWS) {
    const int64_t c1 = std::min(k1, c0 + ROWS);
    for (int64_t n = 0; n < n32; n += 32) Strip<MB, 2>(x, K, w, N, c0, c1, n, acc);
    if (n16 > n32) Strip<MB, 1>(x, K, w, N, c0, c1, n32, acc);
    for (int64_t k = c0; k < c1; ++k)
      for (int m = 0; m < MB; ++m)
        for (int64_t n = n16; n < N; ++n) acc[m * N + n] += x[m * K + k] * AsFloat(w[k * N + n]);
  }
}
#endif

// acc (MB, N) += x[:, k0:k1] @ w[k0:k1, :] for MB <= 8 rows of x.
template <int MB, typename W>
void AccumulateGroup(const float* x, int64_t K, const W* w, int64_t N, int64_t k0, int64_t k1, float* acc) {
#ifdef __AVX512F__
  AccumulateRowsAvx512<MB>(x, K, w, N, k0, k1, acc);
#else
  for (int m0 = 0; m0 < MB; m0 += 4) {
    switch (std::min(4, MB - m0)) {
      case 1: AccumulateRows<1>(x + m0 * K, K, w, N, k0, k1, acc + m0 * N); break;
      case 2: AccumulateRows<2>(x + m0 * K, K, w, N, k0, k1, acc + m0 * N); break;
      case 3: AccumulateRows<3>(x + m0 * K, K, w, N, k0, k1, acc + m0 * N); break;
      default: AccumulateRows<4>(x + m0 * K, K, w, N, k0, k1, acc + m0 * N); break;
    }
  }
#endif
}

template <typename W>
void AccumulateBlock(const float* x, int64_t M, int64_t K, const W* w, int64_t N, int64_t k0, int64_t k1,
                     float* acc) {
  // Batch rows in groups of up to 8, over row sub-blocks of ~256 KiB of weights, so that a group after the
  // first (M > 8) reads the sub-block from L2 rather than from memory again.
  const int64_t sub = std::max<int64_t>(16, ((256 << 10) / (N * static_cast<int64_t>(sizeof(W)))) / 16 * 16);
  for (int64_t s0 = k0; s0 < k1; s0 += sub) {
    const int64_t s1 = std::min(k1, s0 + sub);
    for (int64_t m0 = 0; m0 < M; m0 += 8) {
      const float* xm = x + m0 * K;
      float* am = acc + m0 * N;
      switch (std::min<int64_t>(8, M - m0)) {
        case 1: AccumulateGroup<1>(xm, K, w, N, s0, s1, am); break;
        case 2: AccumulateGroup<2>(xm, K, w, N, s0, s1, am); break;
        case 3: AccumulateGroup<3>(xm, K, w, N, s0, s1, am); break;
        case 4: AccumulateGroup<4>(xm, K, w, N, s0, s1, am); break;
        case 5: AccumulateGroup<5>(xm, K, w, N, s0, s1, am); break;
        case 6: AccumulateGroup<6>(xm, K, w, N, s0, s1, am); break;
        case 7: AccumulateGroup<7>(xm, K, w, N, s0, s1, am); break;
        default: AccumulateGroup<8>(xm, K, w, N, s0, s1, am); break;
      }
    }
  }
}

template <typename W>
ffi::Error MatVec(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, const float* scale,
                  ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() < 2) return ffi::Error::InvalidArgument("vj_matvec: x (M, K), w (..., K, N)");
  const int64_t M = xd[0], K = xd[1], N = wd[wd.size() - 1];
  if (wd[wd.size() - 2] != K) return ffi::Error::InvalidArgument("vj_matvec: x and w disagree on K");
  int64_t layers = 1;
  for (size_t i = 0; i + 2 < wd.size(); ++i) layers *= wd[i];
  if (layer < 0 || layer >= layers) return ffi::Error::InvalidArgument("vj_matvec: layer out of range");
  const W* wl = reinterpret_cast<const W*>(w.untyped_data()) + layer * K * N;
  const float* sl = scale == nullptr ? nullptr : scale + layer * N;
  const float* xp = x.typed_data();
  float* out = y->typed_data();

  // Row blocks of at least ~256 KiB of weights (fewer partials to sum), a few per thread (load balance).
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t row_bytes = N * static_cast<int64_t>(sizeof(W));
  int64_t blocks = std::min<int64_t>(4 * threads, std::max<int64_t>(1, K * row_bytes / (256 << 10)));
  blocks = std::max<int64_t>(1, std::min<int64_t>(blocks, K / 4));
  const int64_t rows = (K + blocks - 1) / blocks;
  blocks = (K + rows - 1) / rows;
  std::vector<float> partial(static_cast<size_t>(blocks) * M * N, 0.0f);
  ParallelFor(pool, blocks, [&](int64_t c) {
    AccumulateBlock<W>(xp, M, K, wl, N, c * rows, std::min(K, (c + 1) * rows), partial.data() + c * M * N);
  });
  // Sum the partials in block order, in column ranges.
  const int64_t col_chunk = std::max<int64_t>(1024, (N + 4 * threads - 1) / (4 * threads));
  const int64_t chunks = (N + col_chunk - 1) / col_chunk;
  ParallelFor(pool, chunks, [&](int64_t j) {
    const int64_t n0 = j * col_chunk, n1 = std::min(N, n0 + col_chunk);
    for (int64_t m = 0; m < M; ++m) {
      float* o = out + m * N;
      const float* p0 = partial.data() + m * N;
      for (int64_t n = n0; n < n1; ++n) o[n] = p0[n];
      for (int64_t c = 1; c < blocks; ++c) {
        const float* pc = partial.data() + (c * M + m) * N;
#pragma GCC ivdep
        for (int64_t n = n0; n < n1; ++n) o[n] += pc[n];
      }
      if (sl != nullptr) {
#pragma GCC ivdep
        for (int64_t n = n0; n < n1; ++n) o[n] *= sl[n];
      }
    }
  });
  return ffi::Error::Success();
}

// --- packed weights -----------------------------------------------------------------------------------

constexpr int64_t kStrip = 32;  // columns per strip (two AVX-512 registers of floats)

// y[:MB, 0:32] (+)= x[:MB, k0:k1] @ p[k0:k1, 0:32] for one strip p (K, 32): the MB x 32 sums stay in
// registers over all the rows (`add`: start from y instead of zero).
template <int MB, typename W>
inline void PackedStrip(const float* __restrict x, int64_t K, const W* __restrict p, int64_t k0, int64_t k1,
                        float* __restrict y, int64_t ldy, bool add) {
#ifdef __AVX512F__
  __m512 a0[MB], a1[MB];
  for (int m = 0; m < MB; ++m) {
    a0[m] = add ? _mm512_loadu_ps(y + m * ldy) : _mm512_setzero_ps();
    a1[m] = add ? _mm512_loadu_ps(y + m * ldy + 16) : _mm512_setzero_ps();
  }
  for (int64_t k = k0; k < k1; ++k) {
    const W* row = p + k * kStrip;
    const __m512 w0 = LoadW(row, 0), w1 = LoadW(row, 16);
    for (int m = 0; m < MB; ++m) {
      const __m512 c = _mm512_set1_ps(x[m * K + k]);
      a0[m] = _mm512_fmadd_ps(c, w0, a0[m]);
      a1[m] = _mm512_fmadd_ps(c, w1, a1[m]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    _mm512_storeu_ps(y + m * ldy, a0[m]);
    _mm512_storeu_ps(y + m * ldy + 16, a1[m]);
  }
#else
  // The compiler vectorises the 32 lanes (AVX2: four registers a row of x).
  float a[MB][kStrip];
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < kStrip; ++j) a[m][j] = add ? y[m * ldy + j] : 0.0f;
  for (int64_t k = k0; k < k1; ++k) {
    const W* __restrict row = p + k * kStrip;
    for (int m = 0; m < MB; ++m) {
      const float c = x[m * K + k];
#pragma GCC ivdep
      for (int j = 0; j < kStrip; ++j) a[m][j] += c * AsFloat(row[j]);
    }
  }
  for (int m = 0; m < MB; ++m)
    for (int j = 0; j < kStrip; ++j) y[m * ldy + j] = a[m][j];
#endif
}

template <typename W>
void PackedGroup(int64_t mb, const float* x, int64_t K, const W* p, int64_t k0, int64_t k1, float* y, int64_t ldy,
                 bool add) {
  switch (mb) {
    case 1: PackedStrip<1>(x, K, p, k0, k1, y, ldy, add); break;
    case 2: PackedStrip<2>(x, K, p, k0, k1, y, ldy, add); break;
    case 3: PackedStrip<3>(x, K, p, k0, k1, y, ldy, add); break;
    case 4: PackedStrip<4>(x, K, p, k0, k1, y, ldy, add); break;
    case 5: PackedStrip<5>(x, K, p, k0, k1, y, ldy, add); break;
    case 6: PackedStrip<6>(x, K, p, k0, k1, y, ldy, add); break;
    case 7: PackedStrip<7>(x, K, p, k0, k1, y, ldy, add); break;
    default: PackedStrip<8>(x, K, p, k0, k1, y, ldy, add); break;
  }
}

template <typename W>
ffi::Error MatVecPacked(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, const float* scale,
                        ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  if (xd.size() != 2 || wd.size() < 3 || wd[wd.size() - 1] != kStrip)
    return ffi::Error::InvalidArgument("vj_matvec_packed: x (M, K), w (..., S, K, 32)");
  const int64_t M = xd[0], K = xd[1], S = wd[wd.size() - 3], N = S * kStrip;
  if (wd[wd.size() - 2] != K) return ffi::Error::InvalidArgument("vj_matvec_packed: x and w disagree on K");
  int64_t layers = 1;
  for (size_t i = 0; i + 3 < wd.size(); ++i) layers *= wd[i];
  if (layer < 0 || layer >= layers) return ffi::Error::InvalidArgument("vj_matvec_packed: layer out of range");
  const W* wl = reinterpret_cast<const W*>(w.untyped_data()) + layer * N * K;
  const float* sl = scale == nullptr ? nullptr : scale + layer * N;
  const float* xp = x.typed_data();
  float* out = y->typed_data();
  // More than 8 rows of x: each group of 8 reads the strip again, so walk K in blocks of ~256 KiB of a
  // strip, re-read from L2 by the groups after the first.
  const int64_t kblock = M <= 8 ? K : std::max<int64_t>(64, (256 << 10) / (kStrip * static_cast<int64_t>(sizeof(W))));
  // A few tasks per thread, each at least ~256 KiB of weights read (times the row groups): waking a thread
  // costs more than a small model's whole product (the served tiny fixture, width 64, ran 1.5x slower
  // with a task per strip).
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t strip_work = K * kStrip * static_cast<int64_t>(sizeof(W)) * ((M + 7) / 8);
  const int64_t min_strips = std::max<int64_t>(1, ((256 << 10) + strip_work - 1) / strip_work);
  const int64_t per_task = std::max<int64_t>(min_strips, S / (4 * threads));
  const int64_t tasks = (S + per_task - 1) / per_task;
  ParallelFor(pool, tasks, [&](int64_t t) {
    for (int64_t s = t * per_task; s < std::min(S, (t + 1) * per_task); ++s) {
      const W* p = wl + s * K * kStrip;
      for (int64_t k0 = 0; k0 < K; k0 += kblock) {
        const int64_t k1 = std::min(K, k0 + kblock);
        for (int64_t m0 = 0; m0 < M; m0 += 8)
          PackedGroup<W>(std::min<int64_t>(8, M - m0), xp + m0 * K, K, p, k0, k1, out + m0 * N + s * kStrip, N,
                         k0 > 0);
      }
      if (sl != nullptr)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t j = 0; j < kStrip; ++j) out[m * N + s * kStrip + j] *= sl[s * kStrip + j];
    }
  });
  return ffi::Error::Success();
}

ffi::Error MatVecF32(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                     ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  if (w.element_type() != ffi::F32) return ffi::Error::InvalidArgument("vj_matvec_f32: w must be float32");
  return MatVec<float>(pool, x, w, nullptr, y, layer);
}

ffi::Error MatVecS8(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> scale,
                    ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  if (w.element_type() != ffi::S8) return ffi::Error::InvalidArgument("vj_matvec_s8: w must be int8");
  return MatVec<int8_t>(pool, x, w, scale.typed_data(), y, layer);
}

ffi::Error PackedF32(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w,
                     ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  if (w.element_type() != ffi::F32) return ffi::Error::InvalidArgument("vj_matvec_packed_f32: w must be float32");
  return MatVecPacked<float>(pool, x, w, nullptr, y, layer);
}

ffi::Error PackedS8(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::AnyBuffer w, ffi::Buffer<ffi::F32> scale,
                    ffi::ResultBuffer<ffi::F32> y, int64_t layer) {
  if (w.element_type() != ffi::S8) return ffi::Error::InvalidArgument("vj_matvec_packed_s8: w must be int8");
  return MatVecPacked<int8_t>(pool, x, w, scale.typed_data(), y, layer);
}

}  // namespace

// The two signatures: float32 weights; int8 weights and their per-column scales.
#define VJ_BIND_F32                                                                                          \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::AnyBuffer>()               \
      .Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("layer")
#define VJ_BIND_S8                                                                                           \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::AnyBuffer>()               \
      .Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>().Attr<int64_t>("layer")

XLA_FFI_DEFINE_HANDLER_SYMBOL(vj_matvec_f32, MatVecF32, VJ_BIND_F32);
XLA_FFI_DEFINE_HANDLER_SYMBOL(vj_matvec_s8, MatVecS8, VJ_BIND_S8);
XLA_FFI_DEFINE_HANDLER_SYMBOL(vj_matvec_packed_f32, PackedF32, VJ_BIND_F32);
XLA_FFI_DEFINE_HANDLER_SYMBOL(vj_matvec_packed_s8, PackedS8, VJ_BIND_S8);
