/* The 4-lane AVX2 Keccak-f[1600] permutation of fastpath/src/beat_hash.c, timed alone; with
 * -DWITH_XKCP, XKCP's KeccakP-1600-times4-SIMD256 (github.com/XKCP/XKCP, CC0) timed beside it
 * on the same states, after checking that both give the same output.
 *
 *   cc -O3 -Ifastpath/include benchmarks/keccak.c -o /tmp/keccak && taskset -c 1 /tmp/keccak
 *   # with XKCP (X = a checkout; u6 = its best AVX2 configuration here):
 *   L=$X/lib/low/KeccakP-1600-times4/AVX2
 *   cc -O3 -mavx2 -I$X/lib/common -I$L -I$L/u6 -I$X/lib/low/KeccakP-1600/common \
 *      -c $L/KeccakP-1600-times4-SIMD256.c -o /tmp/xkcp.o
 *   cc -O3 -DWITH_XKCP -Ifastpath/include -I$X/lib/common -I$L -I$L/u6 benchmarks/keccak.c \
 *      /tmp/xkcp.o -o /tmp/keccak
 *
 * Prints TSC ticks per 4-lane permutation, the best of many short runs (a shared machine
 * preempts long ones). The VM has no cycle counter (perf stat: cycles <not supported>); ticks
 * are at the TSC's fixed rate (2.445 GHz on this project's AMD EPYC).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <x86intrin.h>

#include "../fastpath/src/beat_hash.c"

#ifdef WITH_XKCP
#include "KeccakP-1600-times4-SnP.h"
void KeccakP1600times4_PermuteAll_24rounds(KeccakP1600times4_states *states);
#endif

#define ITERS 1000
#define RUNS 400

__attribute__((target("avx2"))) static double ours(void)
{
    __m256i s[25];
    for (int j = 0; j < 25; j++)
        s[j] = _mm256_set1_epi64x(j);
    uint64_t best = ~0ull;
    for (int r = 0; r < RUNS; r++) {
        uint64_t t0 = __rdtsc();
        for (int i = 0; i < ITERS; i++)
            keccak_x4_permute(s);
        uint64_t t = __rdtsc() - t0;
        best = t < best ? t : best;
    }
    volatile uint64_t sink = (uint64_t)_mm256_extract_epi64(s[0], 0);
    (void)sink;
    return (double)best / ITERS;
}

#ifdef WITH_XKCP
static double xkcp(void)
{
    KeccakP1600times4_states st;
    memset(&st, 1, sizeof st);
    uint64_t best = ~0ull;
    for (int r = 0; r < RUNS; r++) {
        uint64_t t0 = __rdtsc();
        for (int i = 0; i < ITERS; i++)
            KeccakP1600times4_PermuteAll_24rounds(&st);
        uint64_t t = __rdtsc() - t0;
        best = t < best ? t : best;
    }
    return (double)best / ITERS;
}

__attribute__((target("avx2"))) static int same_output(void)
{
    __m256i s[25];
    KeccakP1600times4_states st;
    for (int j = 0; j < 25; j++) {
        s[j] = _mm256_set_epi64x(j * 4 + 3, j * 4 + 2, j * 4 + 1, j * 4);
        st.A[j] = s[j];
    }
    keccak_x4_permute(s);
    KeccakP1600times4_PermuteAll_24rounds(&st);
    return memcmp(s, st.A, sizeof s) == 0;
}
#endif

int main(void)
{
    if (!__builtin_cpu_supports("avx2")) {
        printf("keccak: this CPU has no AVX2\n");
        return 1;
    }
#ifdef WITH_XKCP
    if (!same_output()) {
        printf("keccak: ours and XKCP's permutations differ\n");
        return 1;
    }
#endif
    for (int k = 0; k < 3; k++) {
        printf("beat_hash keccak_x4_permute: %.0f TSC ticks per 4-lane permutation\n", ours());
#ifdef WITH_XKCP
        printf("XKCP KeccakP1600times4_PermuteAll_24rounds: %.0f TSC ticks\n", xkcp());
#endif
    }
    return 0;
}
