/* Nucleus (top-p) sampling over one row of logits in a few linear passes, no sort, drawn by
 * Gumbel-max with noise keyed per token id: the draw is a function of (logits, key), not of how
 * many draws came before, so two nearly equal distributions drawn with one key almost always
 * give the same token.
 *
 * The reference (userlm_local.runtime.sampling, numpy) sorts the probabilities when the nucleus
 * is wide: ~20 ms per token at a 128k vocabulary on flat logits.  Here:
 *   1. weights w_i = exp((x_i - max) / T) in (0, 1], zero for banned (-inf) and min_p-filtered ids
 *      (vectorised: max, then exp and the total);
 *   2. a histogram of the mass per bucket of w: a bucket holds the weights within 1/16 of an
 *      octave (the float's exponent and top 4 mantissa bits), buckets are ordered like the
 *      weights, and only the top 40 octaves get buckets of their own (the rest, weights under
 *      2^-40, share a tail bucket; the tables fit in L1);
 *   3. walking buckets from the heaviest, the bucket where the mass reaches top_p * total;
 *      everything heavier is in the nucleus, and inside that boundary bucket the heaviest
 *      entries are taken exactly (refined by further mantissa bits, then the few left sorted,
 *      ties by id);
 *   4. the draw (``nucleus_gumbel``): the nucleus id i with the largest
 *          s_i = (x_i - max) / T - log(-log(u_i)),
 *      u_i = ((h_i >> 12) + 0.5) * 2^-52 in (0, 1), h_i = splitmix64's (i + 1)-th output from the
 *      state ``key`` (so log p_i plus a standard Gumbel; ties to the smaller id).  s_i is computed
 *      in double from the float logit exactly as the numpy and torch versions compute it, so all
 *      three return the same id for the same key.  Most ids are ruled out without a log: since
 *      -log u >= 1 - u, id i cannot beat the best score s* so far when 1 - u_i >= w_i e^(-s*)
 *      (checked with a 0.1% margin for w_i's float rounding); in id order only ~ln(nucleus size)
 *      ids get their score computed.
 * top_k (rarely used) sorts its k survivors.  The nucleus is the reference's exactly (same
 * set, ties by id; ``nucleus_mask`` writes it out for the tests), so the distribution is the
 * same.  ``nucleus_sample`` is the previous draw (the inverse CDF at the caller's uniform, in
 * id order), kept for bench/sampler_speed.py's old-vs-new comparison.
 *
 * Built by setup.py as userlm_local._nucleus (a plain shared library, loaded with ctypes).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))  /* 8-wide where the CPU has it */
#if __GNUC__ >= 12  /* AVX-512's 64-bit multiply halves the cost of hashing every id of a wide nucleus */
#define HASH_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#else
#define HASH_CLONES VECTOR_CLONES
#endif
#else
#define VECTOR_CLONES
#define HASH_CLONES
#endif

#define TOP_KEY (127u << 4)          /* key of w = 1.0: exponent 127, mantissa bits 0 */
#define OCTAVES 40                   /* weights in [2^-40, 1] get 1/16-octave buckets */
#define NB (OCTAVES * 16 + 2)        /* + the tail bucket 0 (w < 2^-40, and w = 0) */
#define BLOCK 512

static inline uint32_t key_of(float w) {
    uint32_t u;
    memcpy(&u, &w, 4);
    return u >> 19;  /* 8 exponent bits, 4 mantissa bits (w >= 0) */
}

/* the bucket of a weight: 1 + 1/16 octaves above 2^-40, or 0 below */
static inline uint32_t bucket_of(float w) {
    uint32_t k = key_of(w), lo = TOP_KEY - OCTAVES * 16;
    return k > lo ? k - lo : 0;
}

typedef struct { float w; int32_t id; } entry;

static int by_weight_desc(const void *a, const void *b) {
    const entry *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? 1 : -1;
    return x->id - y->id;
}

/* The nucleus: w > cut_w, or w == cut_w > 0 with id <= cut_id. */
typedef struct { float w; int32_t id; double mass; } cut_t;

static inline int in_nucleus(float w, int64_t i, cut_t c) {
    return w > c.w || (w == c.w && w > 0 && i <= c.id);
}

/* Step 1, by blocks: the largest logit, then the weights of ids [lo, hi) and their total
 * (before the min_p filter: top_p is a share of the whole mass, as in the reference). */
VECTOR_CLONES
static float max_of(const float *logits, int64_t n) {
    float m = -INFINITY;
    for (int64_t i = 0; i < n; i++) m = logits[i] > m ? logits[i] : m;
    return m;
}

VECTOR_CLONES
static double exp_block(const float *logits, int64_t lo, int64_t hi, float m, float inv_temp, float min_p,
                        float *w) {
    double total = 0.0;
    for (int64_t i = lo; i < hi; i++) {
        float e = expf((logits[i] - m) * inv_temp);  /* exp(-inf) = 0 */
        total += e;
        w[i] = e < min_p ? 0.0f : e;
    }
    return total;
}

/* The k heaviest, then top_p inside them (still relative to the whole mass). */
static int cut_top_k(const float *w, int64_t n, int64_t top_k, float top_p, double target, cut_t *c) {
    entry *e = malloc(sizeof(entry) * (size_t)n);
    if (!e) return -1;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) if (w[i] > 0) { e[k].w = w[i]; e[k].id = (int32_t)i; k++; }
    qsort(e, (size_t)k, sizeof(entry), by_weight_desc);
    if (k > top_k) k = top_k;
    double acc = 0.0;
    int64_t j = 0;
    for (; j < k; j++) { acc += e[j].w; if (top_p < 1.0f && acc >= target) { j++; break; } }
    if (j > k) j = k;
    c->w = e[j - 1].w; c->id = e[j - 1].id; c->mass = -1;
    free(e);
    return 0;
}

/* Inside the boundary bucket (entries e[0..k), mass acc above them): the exact cut. */
static void cut_in_bucket(entry *e, int64_t k, double acc, double target, cut_t *c) {
    double sub[4096];
    int shift = 19;  /* bits below the bucket's key */
    while (k > 64 && shift > 0) {
        int s2 = shift > 12 ? shift - 12 : 0;
        uint32_t mask = (1u << (shift - s2)) - 1;
        memset(sub, 0, sizeof(double) * (mask + 1));
        for (int64_t j = 0; j < k; j++) { uint32_t v; memcpy(&v, &e[j].w, 4); sub[(v >> s2) & mask] += e[j].w; }
        int64_t s = mask;
        for (; s > 0; s--) { if (acc + sub[s] >= target) break; acc += sub[s]; }
        int64_t kk = 0;
        for (int64_t j = 0; j < k; j++) { uint32_t v; memcpy(&v, &e[j].w, 4); if (((v >> s2) & mask) == (uint32_t)s) e[kk++] = e[j]; }
        k = kk;
        shift = s2;
    }
    qsort(e, (size_t)k, sizeof(entry), by_weight_desc);
    int64_t j = 0;
    for (; j < k; j++) { acc += e[j].w; if (acc >= target) break; }
    if (j >= k) j = k - 1;
    c->w = e[j].w; c->id = e[j].id; c->mass = acc;
}

/* flags[j] = 1 where w[j] is in bucket b, for j < len (a multiple of 8 is padded with 0);
 * returns how many are. */
VECTOR_CLONES
static int64_t match_block(const float *w, int64_t len, uint32_t b, uint8_t *flags) {
    int64_t hits = 0;
    for (int64_t j = 0; j < len; j++) {
        uint8_t f = bucket_of(w[j]) == b;
        flags[j] = f;
        hits += f;
    }
    for (int64_t j = len; j % 8; j++) flags[j] = 0;
    return hits;
}

/* Steps 1 to 3 for top_p: the weights, block by block, each block's histogram made while it
 * is in L1; then the smallest set of heaviest weights whose mass reaches top_p of the total. */
static int cut_top_p(const float *logits, int64_t n, float m, float inv_temp, float min_p, float top_p,
                     float *w, cut_t *c) {
    /* four interleaved histograms: flat logits put most weights in a few buckets, and one
     * histogram would serialise on them */
    double h[4][NB];
    memset(h, 0, sizeof h);
    double total = 0.0;
    int64_t i;
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t hi = lo + BLOCK < n ? lo + BLOCK : n;
        total += exp_block(logits, lo, hi, m, inv_temp, min_p, w);
        for (i = lo; i + 4 <= hi; i += 4) {
            h[0][bucket_of(w[i])] += w[i];
            h[1][bucket_of(w[i + 1])] += w[i + 1];
            h[2][bucket_of(w[i + 2])] += w[i + 2];
            h[3][bucket_of(w[i + 3])] += w[i + 3];
        }
        for (; i < hi; i++) h[0][bucket_of(w[i])] += w[i];
    }
    double target = (double)top_p * total;
    double acc = 0.0;
    int b = NB - 1;
    for (; b >= 0; b--) {
        double mb = h[0][b] + h[1][b] + h[2][b] + h[3][b];
        if (acc + mb >= target) break;
        acc += mb;
    }
    if (b < 0) {  /* rounding: the whole mass falls short of target; take every kept token */
        c->w = 0.0f; c->id = INT32_MAX; c->mass = acc;
        return 0;
    }
    /* the boundary bucket's entries (the tail bucket 0: every positive weight under 2^-40);
     * one integer compare per id, a branch rarely taken and so predicted */
    int64_t k = 0, cap = 1024;
    entry *e = malloc(sizeof(entry) * (size_t)cap);
    if (!e) return -1;
    uint8_t flags[BLOCK];
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t len = lo + BLOCK < n ? BLOCK : n - lo;
        int64_t hits = match_block(w + lo, len, (uint32_t)b, flags);
        for (int64_t j = 0; hits && j < len; j += 8) {
            uint64_t f;
            memcpy(&f, flags + j, 8);  /* eight ids' flags at once: skip the groups with none */
            for (; f; f &= f - 1) {
                int64_t id = lo + j + __builtin_ctzll(f) / 8;
                if (b == 0 && w[id] == 0) continue;  /* the tail bucket also holds the zeros */
                if (k == cap) {
                    cap *= 2;
                    entry *g = realloc(e, sizeof(entry) * (size_t)cap);
                    if (!g) { free(e); return -1; }
                    e = g;
                }
                e[k].w = w[id]; e[k].id = (int32_t)id; k++;
                hits--;
            }
        }
    }
    if (k == 0) {  /* b = 0 with nothing above zero weight: every kept token */
        c->w = 0.0f; c->id = INT32_MAX; c->mass = acc;
    } else if (b == 0) {  /* rare: the nucleus reaches below 2^-40; sort the tail */
        qsort(e, (size_t)k, sizeof(entry), by_weight_desc);
        int64_t j = 0;
        for (; j < k; j++) { acc += e[j].w; if (acc >= target) break; }
        if (j >= k) j = k - 1;
        c->w = e[j].w; c->id = e[j].id; c->mass = acc;
    } else {
        cut_in_bucket(e, k, acc, target, c);
    }
    free(e);
    return 0;
}

/* The nucleus mass of ids [lo, hi) (vectorised: the tie test is folded into a select). */
VECTOR_CLONES
static double block_mass(const float *w, int64_t lo, int64_t hi, cut_t c) {
    double s = 0.0;
    for (int64_t i = lo; i < hi; i++) {
        float x = w[i];
        s += (x > c.w || (x == c.w && x > 0 && i <= c.id)) ? x : 0.0f;
    }
    return s;
}

/* Step 4: inverse CDF in id order; the crossing block alone is walked id by id. */
static int32_t draw(const float *w, int64_t n, cut_t c, double u) {
    if (c.mass < 0) {
        c.mass = 0.0;
        for (int64_t lo = 0; lo < n; lo += BLOCK) c.mass += block_mass(w, lo, lo + BLOCK < n ? lo + BLOCK : n, c);
    }
    double r = u * c.mass, acc = 0.0;
    int32_t last = -1;
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t hi = lo + BLOCK < n ? lo + BLOCK : n;
        double mb = block_mass(w, lo, hi, c);
        if (acc + mb <= r) { acc += mb; continue; }
        for (int64_t i = lo; i < hi; i++) {
            if (in_nucleus(w[i], i, c)) {
                acc += w[i];
                last = (int32_t)i;
                if (r < acc) return (int32_t)i;
            }
        }
    }
    if (last < 0)  /* rounding put r at the very end: the last id of the nucleus */
        for (int64_t i = n - 1; i >= 0; i--) if (in_nucleus(w[i], i, c)) return (int32_t)i;
    return last;
}

static int find_cut(const float *logits, int64_t n, float inv_temp, float top_p, int64_t top_k,
                    float min_p, float *w, cut_t *c, float *max_out) {
    float m = max_of(logits, n);
    *max_out = m;
    if (m < -3.0e38f) return -1;  /* every id banned (-inf); a finite test survives -ffast-math */
    if (top_p < 1.0f && !(top_k > 0 && top_k < n)) return cut_top_p(logits, n, m, inv_temp, min_p, top_p, w, c);
    double total = 0.0;
    for (int64_t lo = 0; lo < n; lo += BLOCK)
        total += exp_block(logits, lo, lo + BLOCK < n ? lo + BLOCK : n, m, inv_temp, min_p, w);
    if (top_k > 0 && top_k < n) return cut_top_k(w, n, top_k, top_p, (double)top_p * total, c);
    c->w = 0.0f; c->id = INT32_MAX; c->mass = -1;  /* every kept id (min_p may have dropped some) */
    return 0;
}

/* The id's uniform: splitmix64's (i + 1)-th output from the state ``key``, its top 52 bits
 * made a double in (0, 1) (exactly: (k + 0.5) needs 53 bits).  The numpy and torch versions in
 * sampling.py compute the same bits. */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t token_hash(uint64_t key, int64_t i) {
    return mix64(key + (uint64_t)(i + 1) * 0x9E3779B97F4A7C15ull);
}

/* The Gumbel score of id i: log p_i (up to the shared normaliser) plus -log(-log u_i), in double
 * and in this order of operations (the numpy and torch versions do the same). */
static inline double gumbel_score(const float *logits, int64_t i, float m, double inv_temp, uint64_t h) {
    double u = ((double)(h >> 12) + 0.5) * 0x1p-52;
    double l = ((double)logits[i] - (double)m) * inv_temp;
    return l - log(-log(u));
}

#define SPARSE 32  /* nucleus ids in a block of 512 below which they are hashed one by one */
#define MARGIN 1.001  /* w_i's float error against exp(l_i) is under 2e-5 for normal w_i */

/* flags[j] = 1 where id lo + j may be in the nucleus (w >= the cut's weight: ties past the cut's id
 * are flagged too, and dropped by the caller); a multiple of 8 padded with 0; how many are. */
VECTOR_CLONES
static int64_t members(const float *w, int64_t lo, int64_t len, cut_t c, uint8_t *flags) {
    int64_t hits = 0;
    for (int64_t j = 0; j < len; j++) {
        float x = w[lo + j];
        uint8_t f = (x >= c.w) & (x > 0);
        flags[j] = f;
        hits += f;
    }
    for (int64_t j = len; j % 8; j++) flags[j] = 0;
    return hits;
}

/* As ``members``, and of those only the ids the bound below leaves (with the threshold thr);
 * *in_nucleus_count: how many ``members`` would have flagged. */
HASH_CLONES
static int64_t candidates(const float *w, int64_t lo, int64_t len, cut_t c, uint64_t key, float thr,
                          uint8_t *flags, int64_t *in_nucleus_count) {
    int32_t hits = 0, count = 0;
    uint64_t state = key + (uint64_t)(lo + 1) * 0x9E3779B97F4A7C15ull;  /* token_hash's, id by id */
    for (int32_t j = 0; j < (int32_t)len; j++) {
        float x = w[lo + j];
        uint64_t h = mix64(state + (uint64_t)j * 0x9E3779B97F4A7C15ull);
        float v = (float)(int32_t)(uint32_t)(~h >> 33);  /* < 2^31: a signed conversion is exact enough */
        int32_t in = (x >= c.w) & (x > 0);  /* as ``members``: ties past the cut's id are dropped later */
        int32_t f = in & ((x < 1.17549435e-38f) | (v < x * thr));
        flags[j] = (uint8_t)f;
        hits += f;
        count += in;
    }
    for (int64_t j = len; j % 8; j++) flags[j] = 0;
    *in_nucleus_count = count;
    return hits;
}

/* Step 4: Gumbel-max over the nucleus, ids in increasing order (so ties go to the smaller id).
 * The bound: s_i > s* needs -log u_i < exp(l_i - s*), and -log u >= 1 - u > (~h >> 33) * 2^-31;
 * so i is ruled out when (~h >> 33) >= w_i * e^(-s*) * 2^31 * MARGIN (in float: its rounding is
 * far inside MARGIN; a threshold past 3e38 is 3e38, which rules out less).  Subnormal weights are
 * too coarse for the bound and are always scored.  Where a block of ids holds many of the
 * nucleus, ``candidates`` applies the bound to all of them at once (vectorised: the hash of every
 * id, nucleus or not, then a select) with the threshold at the block's start; the few ids left
 * (or a sparse block's nucleus ids) are checked against the latest threshold and scored in order. */
static int32_t gumbel_draw(const float *logits, const float *w, int64_t n, cut_t c, float m, double inv_temp,
                           uint64_t key) {
    int32_t arg = -1;
    double best = 0.0;
    float thr = 3.0e38f;
    int dense = 0;
    uint8_t flags[BLOCK];
    for (int64_t lo = 0; lo < n; lo += BLOCK) {
        int64_t len = lo + BLOCK < n ? BLOCK : n - lo;
        /* a sparse nucleus (peaked logits) is hashed id by id below; a dense one all at once
         * (which way: how dense the last block was) */
        int64_t hits, count;
        if (dense) {
            hits = candidates(w, lo, len, c, key, thr, flags, &count);
        } else {
            hits = count = members(w, lo, len, c, flags);
            if (hits > SPARSE) hits = candidates(w, lo, len, c, key, thr, flags, &count);
        }
        dense = count > SPARSE;
        for (int64_t j = 0; hits && j < len; j += 8) {
            uint64_t f;
            memcpy(&f, flags + j, 8);  /* eight ids' flags at once: skip the groups with none */
            for (; f; f &= f - 1) {
                int64_t i = lo + j + __builtin_ctzll(f) / 8;
                float x = w[i];
                uint64_t h = token_hash(key, i);
                hits--;
                if (!in_nucleus(x, i, c)) continue;
                if (arg >= 0 && x >= 1.17549435e-38f && (float)(int32_t)(uint32_t)(~h >> 33) >= x * thr) continue;
                double s = gumbel_score(logits, i, m, inv_temp, h);
                if (arg < 0 || s > best) {
                    best = s;
                    arg = (int32_t)i;
                    double t = exp(-best) * 0x1p31 * MARGIN;
                    thr = t < 3.0e38 ? (float)t : 3.0e38f;
                }
            }
        }
    }
    return arg;
}

/* logits[n] (not modified; -inf = banned), scratch w[n].  inv_temp > 0 (1 / T, the same double the
 * numpy version uses); top_p in (0, 1]; top_k <= 0 for none; min_p in [0, 1); key: the draw's
 * 64-bit key.  Returns the sampled id, or -1 when every logit is -inf or NaN (or memory ran out). */
int32_t nucleus_gumbel(const float *logits, int64_t n, double inv_temp, float top_p, int64_t top_k,
                       float min_p, uint64_t key, float *w) {
    cut_t c;
    float m;
    if (find_cut(logits, n, (float)inv_temp, top_p, top_k, min_p, w, &c, &m) < 0) return -1;
    return gumbel_draw(logits, w, n, c, m, inv_temp, key);
}

/* The previous draw, for the bench only: the inverse CDF at the caller's uniform u in [0, 1), in
 * id order.  Same arguments as before (id[n] unused). */
int32_t nucleus_sample(const float *logits, int64_t n, float inv_temp, float top_p, int64_t top_k,
                       float min_p, double u, float *w, int32_t *id) {
    (void)id;
    cut_t c;
    float m;
    if (find_cut(logits, n, inv_temp, top_p, top_k, min_p, w, &c, &m) < 0) return -1;
    return draw(w, n, c, u);
}

/* The nucleus itself: mask[i] = 1 for every id a draw can return, else 0.  Returns its size,
 * or -1 as nucleus_sample. */
int64_t nucleus_mask(const float *logits, int64_t n, float inv_temp, float top_p, int64_t top_k,
                     float min_p, float *w, uint8_t *mask) {
    cut_t c;
    float m;
    if (find_cut(logits, n, inv_temp, top_p, top_k, min_p, w, &c, &m) < 0) return -1;
    int64_t size = 0;
    for (int64_t i = 0; i < n; i++) size += (mask[i] = (uint8_t)in_nucleus(w[i], i, c));
    return size;
}
