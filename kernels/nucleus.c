/* Nucleus (top-p) sampling over one row of logits in a few linear passes, no sort.
 *
 * The reference (userlm_local.sampling, numpy) sorts the probabilities when the nucleus is wide:
 * ~20 ms per token at a 128k vocabulary on flat logits.  Here:
 *   1. weights w_i = exp((x_i - max) / T) in (0, 1], zero for banned (-inf) and min_p-filtered ids;
 *   2. a histogram of the mass per bucket of w (the float's exponent and top mantissa bits: a
 *      bucket holds weights within 1/16 of an octave, and buckets are ordered like the weights);
 *   3. walking buckets from the heaviest, the bucket where the mass reaches top_p * total;
 *      everything heavier is in the nucleus, and inside that boundary bucket the heaviest
 *      entries are taken exactly (the bucket's few entries are sorted, ties by id);
 *   4. the draw: inverse CDF, in id order, over the nucleus, with the caller's uniform u.
 * top_k (rarely used) sorts its k survivors.  The nucleus is the reference's exactly (same
 * set, ties by id), so the distribution is the same; only the order the CDF walks differs.
 *
 * Built by setup.py as userlm_local._nucleus (a plain shared library, loaded with ctypes).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define NB 4096  /* 8 exponent bits + 4 mantissa bits of a positive float */

static inline uint32_t bucket(float w) {
    uint32_t u;
    memcpy(&u, &w, 4);
    return u >> 19;
}

typedef struct { float w; int32_t id; } entry;

static int by_weight_desc(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? 1 : -1;
    return x->id - y->id;
}

/* logits[n] (not modified; -inf = banned), scratch w[n] and id[n].  inv_temp > 0; top_p in
 * (0, 1]; top_k <= 0 for none; min_p in [0, 1).  u in [0, 1).  Returns the sampled id, or -1
 * when every logit is -inf or NaN. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))  /* 8-wide expf where the CPU has it */
#endif
int32_t nucleus_sample(const float *logits, int64_t n, float inv_temp, float top_p, int64_t top_k,
                       float min_p, double u, float *w, int32_t *id) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = logits[i] > m ? logits[i] : m;
    if (m < -3.0e38f) return -1;  /* every id banned (-inf); a finite test survives -ffast-math */
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        float e = expf((logits[i] - m) * inv_temp);  /* exp(-inf) = 0 */
        w[i] = e;
        total += e;
    }
    if (min_p > 0)
        for (int64_t i = 0; i < n; i++) w[i] = w[i] < min_p ? 0.0f : w[i];
    (void)id;

    double target = (double)top_p * total;  /* as the reference: a share of the whole mass */
    float cut_w = 0.0f;   /* weights above cut_w are in; */
    int32_t cut_id = -1;  /* and those equal to cut_w with id <= cut_id */
    double mass_in = -1;  /* the nucleus' mass, when known from the search */
    if (top_k > 0 && top_k < n) {
        /* the k heaviest, then top_p inside them (still relative to the whole mass) */
        entry *e = malloc(sizeof(entry) * (size_t)n);
        if (!e) return -1;
        int64_t k = 0;
        for (int64_t i = 0; i < n; i++) if (w[i] > 0) { e[k].w = w[i]; e[k].id = (int32_t)i; k++; }
        qsort(e, (size_t)k, sizeof(entry), by_weight_desc);
        if (k > top_k) k = top_k;
        double c = 0.0;
        int64_t j = 0;
        for (; j < k; j++) { c += e[j].w; if (top_p < 1.0f && c >= target) { j++; break; } }
        if (j > k) j = k;
        cut_w = e[j - 1].w; cut_id = e[j - 1].id;
        free(e);
    } else if (top_p < 1.0f) {
        /* four interleaved histograms: flat logits put most weights in a few buckets, and one
         * histogram would serialise on them */
        static __thread double h[4][NB];
        double *mass = h[0];
        memset(h, 0, sizeof h);
        int64_t i = 0;
        for (; i + 4 <= n; i += 4) {
            h[0][bucket(w[i])] += w[i];
            h[1][bucket(w[i + 1])] += w[i + 1];
            h[2][bucket(w[i + 2])] += w[i + 2];
            h[3][bucket(w[i + 3])] += w[i + 3];
        }
        for (; i < n; i++) h[0][bucket(w[i])] += w[i];  /* w = 0 lands in bucket 0 */
        for (int j = 0; j < NB; j++) mass[j] += h[1][j] + h[2][j] + h[3][j];
        double acc = 0.0;
        int b = NB - 1;
        for (; b > 0; b--) {
            if (acc + mass[b] >= target) break;
            acc += mass[b];
        }
        if (b == 0) {  /* every kept token (min_p removed too much mass to reach top_p) */
            cut_w = 0.0f; cut_id = INT32_MAX; mass_in = acc;
        } else {
            /* the boundary bucket's entries, refined 12 mantissa bits at a time, then sorted */
            int64_t k = 0, cap = 1024;
            entry *e = malloc(sizeof(entry) * (size_t)cap);
            if (!e) return -1;
            for (int64_t i = 0; i < n; i++) {
                if (bucket(w[i]) == (uint32_t)b) {
                    if (k == cap) { cap *= 2; entry *g = realloc(e, sizeof(entry) * (size_t)cap); if (!g) { free(e); return -1; } e = g; }
                    e[k].w = w[i]; e[k].id = (int32_t)i; k++;
                }
            }
            int shift = 19;
            static __thread double sub[4096];
            while (k > 64 && shift > 0) {
                int s2 = shift > 12 ? shift - 12 : 0;
                uint32_t mask = (1u << (shift - s2)) - 1;
                memset(sub, 0, sizeof(double) * (mask + 1));
                for (int64_t j = 0; j < k; j++) { uint32_t v; memcpy(&v, &e[j].w, 4); sub[(v >> s2) & mask] += e[j].w; }
                int64_t c = mask;
                for (; c > 0; c--) { if (acc + sub[c] >= target) break; acc += sub[c]; }
                int64_t kk = 0;
                for (int64_t j = 0; j < k; j++) { uint32_t v; memcpy(&v, &e[j].w, 4); if (((v >> s2) & mask) == (uint32_t)c) e[kk++] = e[j]; }
                k = kk;
                shift = s2;
            }
            qsort(e, (size_t)k, sizeof(entry), by_weight_desc);
            int64_t j = 0;
            for (; j < k; j++) { acc += e[j].w; if (acc >= target) break; }
            if (j >= k) j = k - 1;
            cut_w = e[j].w; cut_id = e[j].id; mass_in = acc;
            free(e);
        }
    } else {
        cut_w = 0.0f; cut_id = INT32_MAX;
    }
    /* the draw over {w > cut_w} + {w == cut_w, id <= cut_id}, in id order */
    if (mass_in < 0) {
        mass_in = 0.0;
        for (int64_t i = 0; i < n; i++)
            if (w[i] > cut_w || (w[i] == cut_w && w[i] > 0 && i <= cut_id)) mass_in += w[i];
    }
    double r = u * mass_in, c = 0.0;
    int32_t last = -1;
    for (int64_t i = 0; i < n; i++) {
        if (w[i] > cut_w || (w[i] == cut_w && w[i] > 0 && i <= cut_id)) {
            c += w[i];
            last = (int32_t)i;
            if (r < c) return (int32_t)i;
        }
    }
    return last;
}
