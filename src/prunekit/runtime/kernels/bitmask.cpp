// prunekit bitmask kernel: y[n, out] = x[n, in] @ W^T (+ bias), W as a bitmask plus packed values.
//
// Layout: mask[out, words] (uint64, bit j of word w <-> column 64w + j), rowptr[out + 1] (int32,
// the first packed value of each row), values[nnz + 64] (fp32, bf16, or int8 with an fp32 scale per
// row; row-major, zero padded so that a full-width load past the last value stays inside).
// Bytes read per weight: 1/8 (mask) + density x 4 (fp32) or x 2 (bf16), against 4 dense: at 50%
// about 1.9x less traffic than dense fp32, 3.6x with bf16 values. A batch-1 linear layer is bound
// by that traffic, so this is what makes 50-70% sparsity pay.
// * AVX-512: each 16 columns expand their packed values into place (vexpandps; bf16 and int8
//   values are widened to fp32 first; with VBMI2, bf16 at batch 1 expands 32 at a time) and
//   multiply the 16 inputs, prefetching the row's values ahead; batch > 1 multiplies each
//   expanded tile (2 rows x 64 columns, in registers) by up to 8 input rows at once.
// * AVX2: 8 columns at a time, a permutation table stands in for the expand.
// * Otherwise: plain C++ over the set bits.
// x is [n, in] (row-major); it is copied into a zero-padded [n, 64 x words] buffer first.
// No torch headers: it compiles in about a second and is loaded through ctypes.
#include <cstdint>
#include <cstring>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common.h"

typedef uint16_t bf16;

static inline float bf16_to_float(bf16 h) {
    const uint32_t u = static_cast<uint32_t>(h) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
static inline float to_float(float v) { return v; }
static inline float to_float(bf16 v) { return bf16_to_float(v); }
static inline float to_float(int8_t v) { return static_cast<float>(v); }

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define PK_BITMASK_ISA 2
// The vector interface the kernels below use: L lanes of fp32 (V), zero, load, fma, sum, and
// expand(p, k): the L columns of lane mask k in place (zeros where a bit is clear), from the next
// packed values at p, advancing p past the popcount(k) it used.
typedef __m512 V;
static const int L = 16;
static inline V zero() { return _mm512_setzero_ps(); }
static inline V loadx(const float *p) { return _mm512_loadu_ps(p); }
static inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
static inline float hsum(V v) { return _mm512_reduce_add_ps(v); }
static inline V load_values(const float *p) { return _mm512_loadu_ps(p); }
static inline V load_values(const bf16 *p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i *>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
static inline V load_values(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i *>(p))));
}
// vexpandps. The load stays a separate instruction: gcc would otherwise fold it into vexpandps'
// memory form, which is several times slower on AMD Zen 4.
template <typename T>
static inline V expand(const T *&p, unsigned k) {
    V raw = load_values(p);
    asm("" : "+v"(raw));
    p += __builtin_popcount(k);
    return _mm512_maskz_expand_ps(static_cast<__mmask16>(k), raw);
}

#elif defined(__AVX2__) && defined(__FMA__)
#define PK_BITMASK_ISA 1
typedef __m256 V;
static const int L = 8;
static inline V zero() { return _mm256_setzero_ps(); }
static inline V loadx(const float *p) { return _mm256_loadu_ps(p); }
static inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
static inline float hsum(V v) {
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}
static inline V load_values(const float *p) { return _mm256_loadu_ps(p); }
static inline V load_values(const bf16 *p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i *>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
static inline V load_values(const int8_t *p) {
    const __m128i h = _mm_loadl_epi64(reinterpret_cast<const __m128i *>(p));
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h));
}
// lane l of perm[k] is the packed slot of column l under byte mask k (0 where the bit is clear)
struct ExpandTable {
    alignas(32) int32_t perm[256][8];
    ExpandTable() {
        for (int k = 0; k < 256; ++k) {
            int n = 0;
            for (int l = 0; l < 8; ++l) perm[k][l] = (k >> l) & 1 ? n++ : 0;
        }
    }
};
static const ExpandTable table;
// a permutation from the table stands in for AVX-512's expand; cleared bits are masked to zero
template <typename T>
static inline V expand(const T *&p, unsigned k) {
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(k), bits), bits);
    const __m256i idx = _mm256_load_si256(reinterpret_cast<const __m256i *>(table.perm[k]));
    const __m256 v = _mm256_permutevar8x32_ps(load_values(p), idx);
    p += __builtin_popcount(k);
    return _mm256_and_ps(v, _mm256_castsi256_ps(set));
}
#endif

#ifdef PK_BITMASK_ISA
// lane mask of the q-th group of L columns of mask word m
static inline unsigned lanes(uint64_t m, int q) {
    return static_cast<unsigned>(m >> (L * q)) & ((1u << L) - 1);
}

// how far ahead (in bytes) batch 1 prefetches a row's packed values: the expands keep the core
// busy, so the hardware prefetcher alone leaves the stream's memory latency exposed. The prefetch
// goes to L2 (prefetcht1): measured against prefetcht0 (into L1) on Zen 4, 4096x4096 fp32 at 50%
// ran 1.3-1.4x faster, as the L1's few miss buffers no longer fill with lines needed 4 KB later.
static const int64_t PREFETCH = 4096;
template <typename T>
static inline void prefetch(const T *p) {
    __builtin_prefetch(reinterpret_cast<const char *>(p) + PREFETCH, 0, 2);
}
// whether group q of a word prefetches: once per 64 bytes the values can advance, so that every
// line of the stream is prefetched (fp32 with AVX-512: every group; bf16: every other; int8: one
// per word)
template <typename T>
static inline bool prefetch_group(int q) {
    return (q * L * static_cast<int>(sizeof(T))) % 64 == 0;
}

// rows r0..r1 at batch 1: four accumulators per row (64 / L groups of L columns per word)
template <typename T>
static void gemv(int64_t r0, int64_t r1, int64_t words, const int32_t *rowptr,
                 const uint64_t *mask, const T *val, const float *x, const float *bias, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        const T *p = val + rowptr[r];
        const uint64_t *mr = mask + r * words;
        V acc[4] = {zero(), zero(), zero(), zero()};
        for (int64_t w = 0; w < words; ++w) {
            const uint64_t m = mr[w];
            if (!m) continue;
            V v[64 / L];  // expand the whole word first, then multiply
            for (int q = 0; q < 64 / L; ++q) {
                if (prefetch_group<T>(q)) prefetch(p);
                v[q] = expand(p, lanes(m, q));
            }
            for (int q = 0; q < 64 / L; ++q)
                acc[q & 3] = fmadd(v[q], loadx(x + 64 * w + L * q), acc[q & 3]);
        }
        y[r] = hsum(add(add(acc[0], acc[1]), add(acc[2], acc[3]))) + (bias ? bias[r] : 0.0f);
    }
}

#ifdef __AVX512VBMI2__
#define PK_BITMASK_W32 1
#undef PK_BITMASK_ISA
#define PK_BITMASK_ISA 3
// bf16 at batch 1 with AVX512-VBMI2: one vpexpandw places 32 columns' bf16 values, and
// interleaving them with zeros (vpunpck{l,h}wd) widens them to two fp32 vectors, of columns
// 0-3, 8-11, 16-19, 24-27 and 4-7, 12-15, 20-23, 28-31: x is permuted to that order once per call.
static inline int64_t w32_column(int64_t i) {  // the column at position i of the permuted x
    const int64_t j = i % 32, half = j / 16, l = j % 16;
    return i - j + 8 * (l / 4) + 4 * half + l % 4;
}

// x here is the permuted input (see w32_column); four accumulators: two words' halves
static void gemv(int64_t r0, int64_t r1, int64_t words, const int32_t *rowptr,
                 const uint64_t *mask, const bf16 *val, const float *x, const float *bias, float *y) {
    const __m512i z = _mm512_setzero_si512();
    for (int64_t r = r0; r < r1; ++r) {
        const bf16 *p = val + rowptr[r];
        const uint64_t *mr = mask + r * words;
        V acc[4] = {zero(), zero(), zero(), zero()};
        for (int64_t w = 0; w < words; ++w) {
            const uint64_t m = mr[w];
            if (!m) continue;
            __m512i e[2];
            for (int h = 0; h < 2; ++h) {  // 32 values (64 bytes) each: one prefetch
                prefetch(p);
                const unsigned k = static_cast<unsigned>(m >> (32 * h));
                __m512i raw = _mm512_loadu_si512(p);
                asm("" : "+v"(raw));  // keep the load out of vpexpandw (see expand)
                p += __builtin_popcount(k);
                e[h] = _mm512_maskz_expand_epi16(k, raw);
            }
            for (int h = 0; h < 2; ++h) {
                const float *xh = x + 64 * w + 32 * h;
                acc[2 * h] = fmadd(_mm512_castsi512_ps(_mm512_unpacklo_epi16(z, e[h])), loadx(xh), acc[2 * h]);
                acc[2 * h + 1] =
                    fmadd(_mm512_castsi512_ps(_mm512_unpackhi_epi16(z, e[h])), loadx(xh + 16), acc[2 * h + 1]);
            }
        }
        y[r] = hsum(add(add(acc[0], acc[1]), add(acc[2], acc[3]))) + (bias ? bias[r] : 0.0f);
    }
}

#endif

// R rows (from r) x B batch rows (from b0): each expanded tile of R rows x L columns meets the
// B input rows' L columns, all in registers
template <typename T, int R, int B>
static void tile(int64_t r, int64_t b0, int64_t out, int64_t words, const int32_t *rowptr,
                 const uint64_t *mask, const T *val, const float *x, const float *bias, float *y) {
    const int64_t ld = 64 * words;
    V acc[R][B];
    const T *p[R];
    for (int i = 0; i < R; ++i) {
        p[i] = val + rowptr[r + i];
        for (int b = 0; b < B; ++b) acc[i][b] = zero();
    }
    for (int64_t w = 0; w < words; ++w) {
        for (int q = 0; q < 64 / L; ++q) {
            V v[R];
            for (int i = 0; i < R; ++i) v[i] = expand(p[i], lanes(mask[(r + i) * words + w], q));
            for (int b = 0; b < B; ++b) {
                const V xv = loadx(x + (b0 + b) * ld + 64 * w + L * q);
                for (int i = 0; i < R; ++i) acc[i][b] = fmadd(v[i], xv, acc[i][b]);
            }
        }
    }
    for (int i = 0; i < R; ++i)
        for (int b = 0; b < B; ++b)
            y[(b0 + b) * out + r + i] = hsum(acc[i][b]) + (bias ? bias[r + i] : 0.0f);
}

#else
#define PK_BITMASK_ISA 0
template <typename T>
static void gemv(int64_t r0, int64_t r1, int64_t words, const int32_t *rowptr,
                 const uint64_t *mask, const T *val, const float *x, const float *bias, float *y) {
    for (int64_t r = r0; r < r1; ++r) {
        const T *p = val + rowptr[r];
        float acc = 0.0f;
        for (int64_t w = 0; w < words; ++w)
            for (uint64_t m = mask[r * words + w]; m; m &= m - 1)
                acc += to_float(*p++) * x[64 * w + __builtin_ctzll(m)];
        y[r] = acc + (bias ? bias[r] : 0.0f);
    }
}

template <typename T, int R, int B>
static void tile(int64_t r, int64_t b0, int64_t out, int64_t words, const int32_t *rowptr,
                 const uint64_t *mask, const T *val, const float *x, const float *bias, float *y) {
    const int64_t ld = 64 * words;
    for (int i = 0; i < R; ++i) {
        float acc[B] = {};
        const T *p = val + rowptr[r + i];
        for (int64_t w = 0; w < words; ++w)
            for (uint64_t m = mask[(r + i) * words + w]; m; m &= m - 1) {
                const float v = to_float(*p++);
                const int64_t c = 64 * w + __builtin_ctzll(m);
                for (int b = 0; b < B; ++b) acc[b] += v * x[(b0 + b) * ld + c];
            }
        for (int b = 0; b < B; ++b) y[(b0 + b) * out + r + i] = acc[b] + (bias ? bias[r + i] : 0.0f);
    }
}
#endif

// rows [r0, r1), all n batch rows: row pairs, batch tiles of 8 (the rest in one smaller tile)
template <typename T, int R>
static void rows_tiles(int64_t r, int64_t n, int64_t out, int64_t words, const int32_t *rowptr,
                       const uint64_t *mask, const T *val, const float *x, const float *bias,
                       float *y) {
    int64_t b0 = 0;
    for (; b0 + 8 <= n; b0 += 8) tile<T, R, 8>(r, b0, out, words, rowptr, mask, val, x, bias, y);
    switch (n - b0) {
#define PK_TAIL(k) \
    case k: tile<T, R, k>(r, b0, out, words, rowptr, mask, val, x, bias, y); break;
        PK_TAIL(1) PK_TAIL(2) PK_TAIL(3) PK_TAIL(4) PK_TAIL(5) PK_TAIL(6) PK_TAIL(7)
#undef PK_TAIL
        default: break;
    }
}

// scale (int8 values only, else null): y[:, r] = scale[r] x (row r's integer values . x) + bias[r]
template <typename T>
static void bitmask_linear(int64_t out, int64_t n, int64_t in, int64_t words,
                           const int32_t *rowptr, const uint64_t *mask, const T *val,
                           const float *scale, const float *x, const float *bias, float *y,
                           int nthreads) {
    const float *b = scale ? nullptr : bias;  // with a scale the bias comes after it
    // x [n, in] -> xp [n, 64 x words], zero padded: the last word's loads stay finite
    const int64_t ld = 64 * words;
    const float *xp = x;
    std::vector<float> buf;
    if (ld != in) {
        buf.assign(static_cast<size_t>(n * ld), 0.0f);
        for (int64_t i = 0; i < n; ++i) std::memcpy(&buf[i * ld], x + i * in, in * sizeof(float));
        xp = buf.data();
    }
#ifdef PK_BITMASK_W32
    std::vector<float> xw;  // bf16 at batch 1: x in the order its gemv reads it
    if (n == 1 && sizeof(T) == 2) {
        xw.resize(static_cast<size_t>(ld));
        for (int64_t i = 0; i < ld; ++i) xw[i] = xp[w32_column(i)];
        xp = xw.data();
    }
#endif
    pk_parallel_split(rowptr, out, n, nthreads, [&](int64_t r0, int64_t r1) {
        if (n == 1) {
            gemv(r0, r1, words, rowptr, mask, val, xp, b, y);
            return;
        }
        int64_t r = r0;
        for (; r + 2 <= r1; r += 2) rows_tiles<T, 2>(r, n, out, words, rowptr, mask, val, xp, b, y);
        if (r < r1) rows_tiles<T, 1>(r, n, out, words, rowptr, mask, val, xp, b, y);
    });
    if (scale)
        for (int64_t i = 0; i < n; ++i)
            for (int64_t r = 0; r < out; ++r)
                y[i * out + r] = y[i * out + r] * scale[r] + (bias ? bias[r] : 0.0f);
}

extern "C" {
void pk_bitmask_f32(int64_t out, int64_t n, int64_t in, int64_t words, const int32_t *rowptr,
                    const uint64_t *mask, const float *val, const float *x, const float *bias,
                    float *y, int nthreads) {
    bitmask_linear(out, n, in, words, rowptr, mask, val, nullptr, x, bias, y, nthreads);
}
void pk_bitmask_bf16(int64_t out, int64_t n, int64_t in, int64_t words, const int32_t *rowptr,
                     const uint64_t *mask, const bf16 *val, const float *x, const float *bias,
                     float *y, int nthreads) {
    bitmask_linear(out, n, in, words, rowptr, mask, val, nullptr, x, bias, y, nthreads);
}
// values: int8 (each row's values divided by scale[row]); the scale is the last array argument
void pk_bitmask_int8(int64_t out, int64_t n, int64_t in, int64_t words, const int32_t *rowptr,
                     const uint64_t *mask, const int8_t *val, const float *scale, const float *x,
                     const float *bias, float *y, int nthreads) {
    bitmask_linear(out, n, in, words, rowptr, mask, val, scale, x, bias, y, nthreads);
}
// 3: AVX-512 with VBMI2 (bf16 at batch 1: 16-bit expands), 2: AVX-512 (expand),
// 1: AVX2 (permutation table), 0: portable C++
int pk_bitmask_isa(void) { return PK_BITMASK_ISA; }
}
