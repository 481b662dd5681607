// prunekit CSR kernels: y[n, out] = x[n, in] @ W^T (+ bias), W in CSR with narrow column indices.
//
// Layout: rowptr[out + 1] (int32), col[nnz] (uint16 or int32), val[nnz] (float32).
// * n == 1 (GEMV): each row gathers x[col] (x fits in L1/L2); AVX-512 gathers where available.
// * n > 1: reads xt = x^T [in, n], so each non-zero scales one contiguous row of xt; a row's
//   outputs for a tile of up to 64 batch columns stay in vector registers, then are written to
//   y[n, out] with stride out.
// Rows are split between OpenMP threads at equal non-zero counts (common.h). No torch headers,
// so it compiles in about a second; it is loaded through ctypes.
#include <cstdint>
#include <cstring>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common.h"

typedef float v16 __attribute__((vector_size(64)));
typedef float v8 __attribute__((vector_size(32)));
typedef float v4 __attribute__((vector_size(16)));

template <typename V>
static inline V loadu(const float *p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
}

#ifdef __AVX512F__
static inline __m512i load_idx16(const uint16_t *c) {
    return _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i *>(c)));
}
static inline __m512i load_idx16(const int32_t *c) { return _mm512_loadu_si512(c); }
#endif

template <typename I>
static void gemv_rows(int64_t r0, int64_t r1, const int32_t *rowptr, const I *col,
                      const float *val, const float *x, const float *bias, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        int64_t j = rowptr[r];
        const int64_t end = rowptr[r + 1];
        float acc = bias ? bias[r] : 0.0f;
#ifdef __AVX512F__
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (; j + 32 <= end; j += 32) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j),
                                 _mm512_i32gather_ps(load_idx16(col + j), x, 4), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j + 16),
                                 _mm512_i32gather_ps(load_idx16(col + j + 16), x, 4), a1);
        }
        if (j + 16 <= end) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + j),
                                 _mm512_i32gather_ps(load_idx16(col + j), x, 4), a0);
            j += 16;
        }
        acc += _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
#endif
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        for (; j + 4 <= end; j += 4) {
            s0 += val[j] * x[col[j]];
            s1 += val[j + 1] * x[col[j + 1]];
            s2 += val[j + 2] * x[col[j + 2]];
            s3 += val[j + 3] * x[col[j + 3]];
        }
        for (; j < end; ++j) s0 += val[j] * x[col[j]];
        y[r] = acc + ((s0 + s1) + (s2 + s3));
    }
}

// One tile of K vectors of type V (K * lanes batch columns starting at b0), rows r0..r1.
template <typename I, typename V, int K>
static void spmm_tile(int64_t r0, int64_t r1, int64_t n, int64_t b0, const int32_t *rowptr,
                      const I *col, const float *val, const float *xt, const float *bias,
                      float *y, int64_t out) {
    constexpr int L = sizeof(V) / sizeof(float);
    for (int64_t r = r0; r < r1; ++r) {
        V acc[K];
        const float b = bias ? bias[r] : 0.0f;
        for (int q = 0; q < K; ++q) acc[q] = V{} + b;
        for (int64_t j = rowptr[r]; j < rowptr[r + 1]; ++j) {
            const float v = val[j];
            const float *xr = xt + static_cast<int64_t>(col[j]) * n + b0;
            for (int q = 0; q < K; ++q) acc[q] += v * loadu<V>(xr + q * L);
        }
        for (int q = 0; q < K; ++q)
            for (int k = 0; k < L; ++k) y[(b0 + q * L + k) * out + r] = acc[q][k];
    }
}

template <typename I>
static void spmm_rows(int64_t r0, int64_t r1, int64_t n, const int32_t *rowptr, const I *col,
                      const float *val, const float *xt, const float *bias, float *y,
                      int64_t out) {
    int64_t b = 0;
    for (; b + 64 <= n; b += 64) spmm_tile<I, v16, 4>(r0, r1, n, b, rowptr, col, val, xt, bias, y, out);
    for (; b + 32 <= n; b += 32) spmm_tile<I, v16, 2>(r0, r1, n, b, rowptr, col, val, xt, bias, y, out);
    for (; b + 16 <= n; b += 16) spmm_tile<I, v16, 1>(r0, r1, n, b, rowptr, col, val, xt, bias, y, out);
    for (; b + 8 <= n; b += 8) spmm_tile<I, v8, 1>(r0, r1, n, b, rowptr, col, val, xt, bias, y, out);
    for (; b + 4 <= n; b += 4) spmm_tile<I, v4, 1>(r0, r1, n, b, rowptr, col, val, xt, bias, y, out);
    for (; b < n; ++b) {
        for (int64_t r = r0; r < r1; ++r) {
            float acc = bias ? bias[r] : 0.0f;
            for (int64_t j = rowptr[r]; j < rowptr[r + 1]; ++j)
                acc += val[j] * xt[static_cast<int64_t>(col[j]) * n + b];
            y[b * out + r] = acc;
        }
    }
}

// x is [1, in] when n == 1 and xt = x^T [in, n] when n > 1; y is [n, out].
template <typename I>
static void csr_linear(int64_t out, int64_t n, const int32_t *rowptr, const I *col,
                       const float *val, const float *x, const float *bias, float *y,
                       int nthreads) {
    pk_parallel_split(rowptr, out, n, nthreads, [&](int64_t r0, int64_t r1) {
        if (n == 1) gemv_rows(r0, r1, rowptr, col, val, x, bias, y);
        else spmm_rows(r0, r1, n, rowptr, col, val, x, bias, y, out);
    });
}

extern "C" {
void pk_csr_u16(int64_t out, int64_t n, const int32_t *rowptr, const uint16_t *col,
                const float *val, const float *x, const float *bias, float *y, int nthreads) {
    csr_linear(out, n, rowptr, col, val, x, bias, y, nthreads);
}
void pk_csr_i32(int64_t out, int64_t n, const int32_t *rowptr, const int32_t *col,
                const float *val, const float *x, const float *bias, float *y, int nthreads) {
    csr_linear(out, n, rowptr, col, val, x, bias, y, nthreads);
}
int pk_csr_abi_version(void) { return 1; }
}
