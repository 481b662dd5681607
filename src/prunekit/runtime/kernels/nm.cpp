// prunekit N:M kernel: y[n, out] = x[n, in] @ W^T (+ bias), W with exactly N slots per group of M.
//
// Layout: values[out, K] (fp32 or bf16, K = in / M x N rounded up to 16, zero padded) and, per 16
// values (a chunk), their positions inside their groups: 2 bits each for M = 4 (one uint32 per
// chunk), 4 bits each for M = 8 (two uint32: lanes 0-7, then 8-15). A chunk covers 16 / N groups,
// that is C = 16 M / N input columns: 32 for 2:4 and 4:8, 64 for 1:4 and 2:8.
// Bytes per weight at 2:4: (4 + 0.25) / 2 = 2.125 against 4 dense.
// * AVX-512: lane i of a chunk reads input column (i / N) x M + position, picked from the chunk's
//   C inputs (in registers) by one two-source permute (vpermt2ps; two and a blend for C = 64);
//   batch > 1 applies each chunk of 2 rows to up to 8 input rows.
// * Otherwise: plain C++.
// x is [n, in]; it is copied into a zero-padded [n, C x chunks] buffer first.
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "common.h"

typedef uint16_t bf16;

static inline float to_float(float v) { return v; }
static inline float to_float(bf16 h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <int N, int M>
struct Pattern {
    static constexpr int C = 16 * M / N;       // input columns per chunk of 16 values
    static constexpr int BITS = M == 4 ? 2 : 4;  // bits per position
    static constexpr int WORDS = BITS / 2;     // uint32 index words per chunk
    // position of lane i of chunk c in its group
    static inline int pos(const uint32_t *idx, int64_t c, int i) {
        const uint32_t w = idx[c * WORDS + (BITS == 2 ? 0 : i / 8)];
        return (w >> (BITS * (BITS == 2 ? i : i % 8))) & (M - 1);
    }
};

#ifdef __AVX512F__
#define PK_NM_ISA 2
// how far ahead (in bytes) each row's values are prefetched, into L2: the permutes keep the core
// busy, so the hardware prefetcher alone leaves memory latency exposed (as in bitmask.cpp)
static const int64_t PREFETCH = 4096;
static inline __m512 load16(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 load16(const bf16 *p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// lane i's column inside chunk c: (i / N) x M + its position
template <int N, int M>
static inline __m512i columns(const uint32_t *idx, int64_t c) {
    typedef Pattern<N, M> P;
    __m512i base = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    base = _mm512_mullo_epi32(_mm512_srli_epi32(base, N == 1 ? 0 : N == 2 ? 1 : 2),
                              _mm512_set1_epi32(M));
    __m512i f;
    if (P::BITS == 2) {
        const __m512i sh = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        f = _mm512_srlv_epi32(_mm512_set1_epi32(static_cast<int>(idx[c])), sh);
    } else {
        const __m512i sh = _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28);
        const __m512i w = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_set1_epi32(static_cast<int>(idx[2 * c]))),
            _mm256_set1_epi32(static_cast<int>(idx[2 * c + 1])), 1);
        f = _mm512_srlv_epi32(w, sh);
    }
    return _mm512_add_epi32(base, _mm512_and_si512(f, _mm512_set1_epi32(M - 1)));
}

// the inputs of lanes `col` from the C inputs at xc
template <int C>
static inline __m512 pick(const float *xc, __m512i col) {
    const __m512 lo = _mm512_permutex2var_ps(_mm512_loadu_ps(xc), col, _mm512_loadu_ps(xc + 16));
    if (C == 32) return lo;
    const __m512 hi = _mm512_permutex2var_ps(_mm512_loadu_ps(xc + 32), col, _mm512_loadu_ps(xc + 48));
    const __mmask16 upper = _mm512_test_epi32_mask(col, _mm512_set1_epi32(32));
    return _mm512_mask_blend_ps(upper, lo, hi);
}

template <typename T, int N, int M, int R, int B>
static void tile(int64_t r, int64_t b0, int64_t out, int64_t chunks, const T *val,
                 const uint32_t *idx, const float *x, const float *bias, float *y) {
    typedef Pattern<N, M> P;
    const int64_t ld = P::C * chunks;
    __m512 acc[R][B][2];
    for (int i = 0; i < R; ++i)
        for (int b = 0; b < B; ++b) acc[i][b][0] = acc[i][b][1] = _mm512_setzero_ps();
    for (int64_t c = 0; c < chunks; ++c) {
        __m512i col[R];
        __m512 v[R];
        for (int i = 0; i < R; ++i) {
            const T *vc = val + (r + i) * chunks * 16 + c * 16;
            __builtin_prefetch(reinterpret_cast<const char *>(vc) + PREFETCH, 0, 2);
            col[i] = columns<N, M>(idx + (r + i) * chunks * P::WORDS, c);
            v[i] = load16(vc);
        }
        for (int b = 0; b < B; ++b) {
            const float *xc = x + (b0 + b) * ld + c * P::C;
            for (int i = 0; i < R; ++i)
                acc[i][b][c & 1] = _mm512_fmadd_ps(v[i], pick<P::C>(xc, col[i]), acc[i][b][c & 1]);
        }
    }
    for (int i = 0; i < R; ++i)
        for (int b = 0; b < B; ++b)
            y[(b0 + b) * out + r + i] = _mm512_reduce_add_ps(_mm512_add_ps(acc[i][b][0], acc[i][b][1])) +
                                        (bias ? bias[r + i] : 0.0f);
}

#else
#define PK_NM_ISA 0
template <typename T, int N, int M, int R, int B>
static void tile(int64_t r, int64_t b0, int64_t out, int64_t chunks, const T *val,
                 const uint32_t *idx, const float *x, const float *bias, float *y) {
    typedef Pattern<N, M> P;
    const int64_t ld = P::C * chunks;
    for (int i = 0; i < R; ++i) {
        float acc[B] = {};
        const T *vr = val + (r + i) * chunks * 16;
        const uint32_t *ir = idx + (r + i) * chunks * P::WORDS;
        for (int64_t c = 0; c < chunks; ++c)
            for (int l = 0; l < 16; ++l) {
                const float v = to_float(vr[c * 16 + l]);
                const int64_t col = c * P::C + (l / N) * M + P::pos(ir, c, l);
                for (int b = 0; b < B; ++b) acc[b] += v * x[(b0 + b) * ld + col];
            }
        for (int b = 0; b < B; ++b) y[(b0 + b) * out + r + i] = acc[b] + (bias ? bias[r + i] : 0.0f);
    }
}
#endif

template <typename T, int N, int M, int R>
static void rows_tiles(int64_t r, int64_t n, int64_t out, int64_t chunks, const T *val,
                       const uint32_t *idx, const float *x, const float *bias, float *y) {
    if (n == 1) {
        tile<T, N, M, R, 1>(r, 0, out, chunks, val, idx, x, bias, y);
        return;
    }
    int64_t b0 = 0;
    for (; b0 + 8 <= n; b0 += 8) tile<T, N, M, R, 8>(r, b0, out, chunks, val, idx, x, bias, y);
    switch (n - b0) {
#define PK_TAIL(k) \
    case k: tile<T, N, M, R, k>(r, b0, out, chunks, val, idx, x, bias, y); break;
        PK_TAIL(1) PK_TAIL(2) PK_TAIL(3) PK_TAIL(4) PK_TAIL(5) PK_TAIL(6) PK_TAIL(7)
#undef PK_TAIL
        default: break;
    }
}

template <typename T, int N, int M>
static void nm_linear(int64_t out, int64_t n, int64_t in, const uint32_t *idx, const T *val,
                      const float *x, const float *bias, float *y, int nthreads) {
    typedef Pattern<N, M> P;
    const int64_t chunks = (in / M * N + 15) / 16;
    const int64_t ld = P::C * chunks;
    std::vector<float> buf(static_cast<size_t>(n * ld), 0.0f);  // x [n, in] -> [n, ld], zero padded
    for (int64_t b = 0; b < n; ++b) std::memcpy(&buf[b * ld], x + b * in, in * sizeof(float));
    const float *xp = buf.data();
    // batch 1 takes one row at a time; batch > 1 row pairs, so each input tile serves two rows
    pk_parallel_even(out, out * chunks * 16, n, nthreads, [&](int64_t r0, int64_t r1) {
        int64_t r = r0;
        if (n > 1)
            for (; r + 2 <= r1; r += 2) rows_tiles<T, N, M, 2>(r, n, out, chunks, val, idx, xp, bias, y);
        for (; r < r1; ++r) rows_tiles<T, N, M, 1>(r, n, out, chunks, val, idx, xp, bias, y);
    });
}

template <typename T>
static int nm_dispatch(int64_t out, int64_t n, int64_t in, int64_t keep, int64_t group,
                       const uint32_t *idx, const T *val, const float *x, const float *bias,
                       float *y, int nthreads) {
#define PK_CASE(N, M) \
    if (keep == N && group == M) { nm_linear<T, N, M>(out, n, in, idx, val, x, bias, y, nthreads); return 0; }
    PK_CASE(2, 4) PK_CASE(1, 4) PK_CASE(4, 8) PK_CASE(2, 8)
#undef PK_CASE
    return 1;
}

extern "C" {
// returns 0, or 1 for an unsupported N:M (y untouched)
int pk_nm_f32(int64_t out, int64_t n, int64_t in, int64_t keep, int64_t group, const uint32_t *idx,
              const float *val, const float *x, const float *bias, float *y, int nthreads) {
    return nm_dispatch(out, n, in, keep, group, idx, val, x, bias, y, nthreads);
}
int pk_nm_bf16(int64_t out, int64_t n, int64_t in, int64_t keep, int64_t group, const uint32_t *idx,
               const bf16 *val, const float *x, const float *bias, float *y, int nthreads) {
    return nm_dispatch(out, n, in, keep, group, idx, val, x, bias, y, nthreads);
}
// 2: AVX-512 (permutes), 0: portable C++
int pk_nm_isa(void) { return PK_NM_ISA; }
}
