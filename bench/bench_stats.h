/* Latency histograms and a small PRNG for the benchmark tools (chat-bench, chat-kbgen).
 *
 * Header-only: static inline functions that only the two benchmark programs include.
 *
 * The histogram is log-linear (HDR-style): values below 2^BH_SUB_BITS are exact, above that every power
 * of two is split into 2^BH_SUB_BITS buckets, so a reported percentile is within 1/64 (1.6 %) of the true
 * value while the structure has a fixed size, needs no allocation per sample and merges by addition
 * (chat-bench's worker processes send theirs to the parent through a pipe). Values are microseconds.
 * The exact minimum, maximum and sum are kept beside the buckets. */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define BH_SUB_BITS 6
#define BH_SUB (1u << BH_SUB_BITS)
#define BH_BUCKETS ((64 - BH_SUB_BITS + 1) * BH_SUB)

typedef struct bench_hist {
    uint64_t count;
    uint64_t sum;
    uint64_t min;
    uint64_t max;
    uint64_t b[BH_BUCKETS];
} bench_hist;

static inline void bh_init(bench_hist *h) { memset(h, 0, sizeof *h); }

static inline unsigned bh_index(uint64_t v)
{
    if (v < BH_SUB) return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - BH_SUB_BITS;
    return ((msb - BH_SUB_BITS + 1) << BH_SUB_BITS) + (unsigned)((v >> shift) & (BH_SUB - 1));
}

/* The largest value that falls into bucket i (a percentile is reported as its bucket's upper bound,
 * clipped to the exact maximum, so it never understates). */
static inline uint64_t bh_upper(unsigned i)
{
    unsigned g = i >> BH_SUB_BITS, sub = i & (BH_SUB - 1);
    if (g == 0) return sub;
    unsigned shift = g - 1;
    uint64_t low = ((uint64_t)BH_SUB + sub) << shift;
    return low + ((uint64_t)1 << shift) - 1;
}

static inline void bh_add(bench_hist *h, int64_t value)
{
    uint64_t v = value < 0 ? 0 : (uint64_t)value;
    if (!h->count || v < h->min) h->min = v;
    if (v > h->max) h->max = v;
    h->count++;
    h->sum += v;
    h->b[bh_index(v)]++;
}

static inline void bh_merge(bench_hist *into, const bench_hist *from)
{
    if (!from->count) return;
    if (!into->count || from->min < into->min) into->min = from->min;
    if (from->max > into->max) into->max = from->max;
    into->count += from->count;
    into->sum += from->sum;
    for (unsigned i = 0; i < BH_BUCKETS; i++) into->b[i] += from->b[i];
}

/* q in [0, 1]; 0 when empty. */
static inline uint64_t bh_quantile(const bench_hist *h, double q)
{
    if (!h->count) return 0;
    if (q >= 1.0) return h->max;
    uint64_t rank = (uint64_t)(q * (double)h->count);
    if (rank >= h->count) rank = h->count - 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BH_BUCKETS; i++) {
        seen += h->b[i];
        if (seen > rank) {
            uint64_t u = bh_upper(i);
            if (u > h->max) u = h->max;
            if (u < h->min) u = h->min;
            return u;
        }
    }
    return h->max;
}

static inline double bh_mean(const bench_hist *h) { return h->count ? (double)h->sum / (double)h->count : 0.0; }

/* Formats microseconds for people: "840 us", "12.4 ms", "3.20 s". */
static inline const char *bh_fmt_us(uint64_t us, char *buf, size_t cap)
{
    if (us < 1000) snprintf(buf, cap, "%llu us", (unsigned long long)us);
    else if (us < 1000000) snprintf(buf, cap, "%.2f ms", (double)us / 1000.0);
    else snprintf(buf, cap, "%.2f s", (double)us / 1e6);
    return buf;
}

/* One line: "name  n=…  p50 …  p90 …  p99 …  max …  mean …". */
static inline void bh_print(FILE *f, const char *name, const bench_hist *h)
{
    char a[32], b[32], c[32], d[32], e[32];
    if (!h->count) {
        fprintf(f, "  %-26s n=0\n", name);
        return;
    }
    fprintf(f, "  %-26s n=%-8llu p50 %-10s p90 %-10s p99 %-10s max %-10s mean %s\n", name,
            (unsigned long long)h->count, bh_fmt_us(bh_quantile(h, 0.50), a, sizeof a),
            bh_fmt_us(bh_quantile(h, 0.90), b, sizeof b), bh_fmt_us(bh_quantile(h, 0.99), c, sizeof c),
            bh_fmt_us(h->max, d, sizeof d), bh_fmt_us((uint64_t)bh_mean(h), e, sizeof e));
}

/* splitmix64: a fast deterministic PRNG for synthetic data and WebSocket masking keys in the load
 * generator (neither needs a CSPRNG: the masks only have to vary, the data only has to be reproducible). */
static inline uint64_t bench_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, n) (n > 0); the modulo bias is irrelevant at these sizes. */
static inline uint32_t bench_rand_below(uint64_t *state, uint32_t n) { return (uint32_t)(bench_rand(state) % n); }

#endif
