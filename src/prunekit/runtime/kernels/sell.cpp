// prunekit SELL-16 kernel: y[n, out] = x[n, in] @ W^T (+ bias), rows permuted and sliced.
//
// "Permuted arrays": rows are sorted by their non-zero count (perm[k] is the original row of
// permuted row k) and cut into slices of 16 rows. A slice of width w (its longest row) stores
// w x 16 entries column-major: entry (k, lane) holds the k-th non-zero of the slice's lane-th
// row, padded with value 0 / column 0. Sorting keeps padding small, and a 16-lane vector then
// serves 16 rows at once: no per-row horizontal sums, no per-row tails. Batch 1 (GEMV) is the
// target; n > 1 reads xt = x^T [in, n] row by row. Threads split the slices.
#include <cstdint>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common.h"

static const int C = 16;

// slices [s0, s1): slice s has entries sptr[s]*16 .. sptr[s+1]*16 (sptr counts columns of 16)
static void sell_gemv(int64_t s0, int64_t s1, int64_t out, const int32_t *sptr,
                      const int32_t *perm, const uint16_t *col, const float *val, const float *x,
                      const float *bias, float *y) {
    for (int64_t s = s0; s < s1; ++s) {
        const int64_t k0 = sptr[s], k1 = sptr[s + 1];
        float acc[C];
#ifdef __AVX512F__
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int64_t k = k0;
        for (; k + 2 <= k1; k += 2) {
            const int64_t e = k * C;
            __m512i i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(col + e)));
            __m512i i1 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(col + e + C)));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + e), _mm512_i32gather_ps(i0, x, 4), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(val + e + C), _mm512_i32gather_ps(i1, x, 4), a1);
        }
        if (k < k1) {
            const int64_t e = k * C;
            __m512i i0 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(col + e)));
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(val + e), _mm512_i32gather_ps(i0, x, 4), a0);
        }
        _mm512_storeu_ps(acc, _mm512_add_ps(a0, a1));
#else
        for (int l = 0; l < C; ++l) acc[l] = 0.0f;
        for (int64_t k = k0; k < k1; ++k)
            for (int l = 0; l < C; ++l) acc[l] += val[k * C + l] * x[col[k * C + l]];
#endif
        for (int l = 0; l < C; ++l) {
            const int64_t r = s * C + l;
            if (r < out) {
                const int32_t row = perm[r];
                y[row] = acc[l] + (bias ? bias[row] : 0.0f);
            }
        }
    }
}

// n > 1: each lane's row in turn, over the slice's column-major entries (stride 16)
static void sell_spmm(int64_t s0, int64_t s1, int64_t out, int64_t n, const int32_t *sptr,
                      const int32_t *perm, const uint16_t *col, const float *val, const float *xt,
                      const float *bias, float *y) {
    for (int64_t s = s0; s < s1; ++s) {
        for (int l = 0; l < C && s * C + l < out; ++l) {
            const int32_t row = perm[s * C + l];
            const float b = bias ? bias[row] : 0.0f;
            for (int64_t b0 = 0; b0 < n; b0 += 16) {
                const int nb = n - b0 < 16 ? static_cast<int>(n - b0) : 16;
                float acc[16];
                for (int q = 0; q < 16; ++q) acc[q] = b;
                for (int64_t k = sptr[s]; k < sptr[s + 1]; ++k) {
                    const float v = val[k * C + l];
                    const float *xr = xt + static_cast<int64_t>(col[k * C + l]) * n + b0;
                    if (nb == 16) {
                        for (int q = 0; q < 16; ++q) acc[q] += v * xr[q];
                    } else {
                        for (int q = 0; q < nb; ++q) acc[q] += v * xr[q];
                    }
                }
                for (int q = 0; q < nb; ++q) y[(b0 + q) * out + row] = acc[q];
            }
        }
    }
}

extern "C" {
// x is [1, in] when n == 1 and xt = x^T [in, n] when n > 1; y is [n, out].
void pk_sell16(int64_t out, int64_t n, const int32_t *sptr, const int32_t *perm,
               const uint16_t *col, const float *val, const float *x, const float *bias, float *y,
               int nthreads) {
    const int64_t slices = (out + C - 1) / C;
    pk_parallel_split(sptr, slices, n, nthreads, [&](int64_t s0, int64_t s1) {
        if (n == 1) sell_gemv(s0, s1, out, sptr, perm, col, val, x, bias, y);
        else sell_spmm(s0, s1, out, n, sptr, perm, col, val, x, bias, y);
    });
}
int pk_sell_abi_version(void) { return 1; }
}
