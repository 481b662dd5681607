// Shared by prunekit's compiled kernels: split work between OpenMP threads.
#pragma once
#include <cstdint>
#ifdef _OPENMP
#include <omp.h>
#endif

// first unit u in [0, units] whose cumulative work ptr[u] is >= target (ptr is non-decreasing)
static inline int64_t pk_lower_bound(const int32_t *ptr, int64_t units, int64_t target) {
    int64_t lo = 0, hi = units;
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (ptr[mid] < target) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// Runs body(t, nt) on each of nt threads (nt = nthreads, or 1 when the job is small: work x
// batch below 64K, where waking threads would cost more than it saves).
template <typename F>
static void pk_parallel(int64_t work, int64_t n, int nthreads, F body) {
    if (nthreads < 1 || work * (n < 8 ? n : 8) < 65536) nthreads = 1;
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        body(t, nt);
    }
}

// Runs body(begin, end) over units [0, units) cut at equal work, where ptr[u] is the work before
// unit u (a CSR row pointer, a slice pointer).
template <typename F>
static void pk_parallel_split(const int32_t *ptr, int64_t units, int64_t n, int nthreads, F body) {
    const int64_t work = ptr[units];
    pk_parallel(work, n, nthreads, [&](int t, int nt) {
        const int64_t u0 = pk_lower_bound(ptr, units, work * t / nt);
        const int64_t u1 = t + 1 == nt ? units : pk_lower_bound(ptr, units, work * (t + 1) / nt);
        body(u0, u1);
    });
}

// Runs body(begin, end) over units [0, units) of equal work each (work is their total).
template <typename F>
static void pk_parallel_even(int64_t units, int64_t work, int64_t n, int nthreads, F body) {
    pk_parallel(work, n, nthreads, [&](int t, int nt) { body(units * t / nt, units * (t + 1) / nt); });
}
