/* The vectorised window pass of refbbp's kernel (included by _core.pyx).
 *
 * A window matrix (a convolution's rows, refbbp/network/window.py) repeats one kernel
 * at every output position: the rows of the output channels of one group at one
 * position read the same inputs, with weights kernel[m, c, k] that differ only by m.
 * This pass takes such a tile of rows together, up to REFBBP_TILE output channels, and
 * runs each step of SPEC 2 and 3.2-3.5 over the tile's rows at once, four rows per
 * vector: gradient messages, kappa, scores, the row maxima, the exponentials and their
 * sums, the messages. Per row, every sum runs over the row's non-zero components in the
 * same order as the row-by-row pass (_core.pyx, _window_row), so each row's maximum,
 * total and ratio are the same numbers; only the exponential is this file's own
 * (rv_exp_nonpos, within about 1 ulp of exp) and what the tile's rows send to one input
 * is added up before it reaches the accumulator. The operations and their order are
 * fixed by the code (explicit four-lane vectors, no reassociation, no contraction into
 * FMA), so the bits do not depend on the instruction set the compiler picks.
 *
 * GCC and clang only (vector extensions); elsewhere REFBBP_VECTOR is 0 and the kernel
 * runs every row through the row-by-row pass.
 */
#ifndef REFBBP_VECTOR_H
#define REFBBP_VECTOR_H

#include <stdint.h>
#include <string.h>

/* Output channels per tile: a multiple of the four lanes. */
#define REFBBP_TILE 64

#if (defined(__GNUC__) || defined(__clang__)) && !defined(REFBBP_NO_VECTOR)
#define REFBBP_VECTOR 1

/* No contraction of a * b + c into one FMA (its single rounding would make the bits
 * depend on the instruction set). */
#pragma GCC optimize ("fp-contract=off")

typedef double rv_d __attribute__((vector_size(32)));
typedef int64_t rv_i __attribute__((vector_size(32)));
typedef uint64_t rv_u __attribute__((vector_size(32)));

#define RV_N (REFBBP_TILE / 4)

/* GCC on x86-64: an AVX2 version of the pass besides the baseline one, picked at load
 * time (the same operations, so the same bits; AVX2 alone, without FMA). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define REFBBP_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define REFBBP_CLONES
#endif

static inline rv_d rv_load(const double *p) { rv_d v; memcpy(&v, p, sizeof v); return v; }
static inline void rv_store(double *p, rv_d v) { memcpy(p, &v, sizeof v); }
static inline rv_d rv_set1(double x) { rv_d v = {x, x, x, x}; return v; }
/* mask ? a : b, lane by lane (mask lanes all ones or all zeros). */
static inline rv_d rv_select(rv_i mask, rv_d a, rv_d b)
{
    return (rv_d)((mask & (rv_i)a) | (~mask & (rv_i)b));
}
static inline rv_d rv_and(rv_i mask, rv_d a) { return (rv_d)(mask & (rv_i)a); }
static inline rv_d rv_abs(rv_d a)
{
    return (rv_d)((rv_u)a & (rv_u){~(1ULL << 63), ~(1ULL << 63), ~(1ULL << 63),
                                    ~(1ULL << 63)});
}
/* The lanes' sum in one fixed order. */
static inline double rv_sum(rv_d a) { return (a[0] + a[1]) + (a[2] + a[3]); }

/* 2^(j/64), j = 0 .. 63, each correctly rounded (computed with 60-digit decimals). */
static const double rv_exp2_64[64] = {
    0x1.0000000000000p+0, 0x1.02c9a3e778061p+0, 0x1.059b0d3158574p+0,
    0x1.0874518759bc8p+0, 0x1.0b5586cf9890fp+0, 0x1.0e3ec32d3d1a2p+0,
    0x1.11301d0125b51p+0, 0x1.1429aaea92de0p+0, 0x1.172b83c7d517bp+0,
    0x1.1a35beb6fcb75p+0, 0x1.1d4873168b9aap+0, 0x1.2063b88628cd6p+0,
    0x1.2387a6e756238p+0, 0x1.26b4565e27cddp+0, 0x1.29e9df51fdee1p+0,
    0x1.2d285a6e4030bp+0, 0x1.306fe0a31b715p+0, 0x1.33c08b26416ffp+0,
    0x1.371a7373aa9cbp+0, 0x1.3a7db34e59ff7p+0, 0x1.3dea64c123422p+0,
    0x1.4160a21f72e2ap+0, 0x1.44e086061892dp+0, 0x1.486a2b5c13cd0p+0,
    0x1.4bfdad5362a27p+0, 0x1.4f9b2769d2ca7p+0, 0x1.5342b569d4f82p+0,
    0x1.56f4736b527dap+0, 0x1.5ab07dd485429p+0, 0x1.5e76f15ad2148p+0,
    0x1.6247eb03a5585p+0, 0x1.6623882552225p+0, 0x1.6a09e667f3bcdp+0,
    0x1.6dfb23c651a2fp+0, 0x1.71f75e8ec5f74p+0, 0x1.75feb564267c9p+0,
    0x1.7a11473eb0187p+0, 0x1.7e2f336cf4e62p+0, 0x1.82589994cce13p+0,
    0x1.868d99b4492edp+0, 0x1.8ace5422aa0dbp+0, 0x1.8f1ae99157736p+0,
    0x1.93737b0cdc5e5p+0, 0x1.97d829fde4e50p+0, 0x1.9c49182a3f090p+0,
    0x1.a0c667b5de565p+0, 0x1.a5503b23e255dp+0, 0x1.a9e6b5579fdbfp+0,
    0x1.ae89f995ad3adp+0, 0x1.b33a2b84f15fbp+0, 0x1.b7f76f2fb5e47p+0,
    0x1.bcc1e904bc1d2p+0, 0x1.c199bdd85529cp+0, 0x1.c67f12e57d14bp+0,
    0x1.cb720dcef9069p+0, 0x1.d072d4a07897cp+0, 0x1.d5818dcfba487p+0,
    0x1.da9e603db3285p+0, 0x1.dfc97337b9b5fp+0, 0x1.e502ee78b3ff6p+0,
    0x1.ea4afa2a490dap+0, 0x1.efa1bee615a27p+0, 0x1.f50765b6e4540p+0,
    0x1.fa7c1819e90d8p+0
};

/* The part both exponentials share, for x = (64 n + j) ln2 / 64 + r with |r| <= ln2 / 128
 * (Cody-Waite: ln2 / 64 split in two, the high part with trailing zeros so that
 * k * LN2_64_HI is exact): k = 64 n + j (in *k) and exp(r) - 1 = q, returned, by its
 * Taylor polynomial of degree 5 (truncation below 4e-17). */
static inline rv_d rv_exp_reduce(rv_d x, rv_i *k)
{
    const rv_d magic = rv_set1(6755399441055744.0);          /* 1.5 * 2^52 */
    const rv_d inv = rv_set1(92.33248261689366);             /* 64 / ln 2 */
    const rv_d ln2_64_hi = rv_set1(6.93147180369123816490e-01 / 64);
    const rv_d ln2_64_lo = rv_set1(1.90821492927058770002e-10 / 64);
    rv_d t, nd, r, q;
    t = x * inv + magic;                     /* k = round(64 x / ln2) in the low bits */
    nd = t - magic;
    r = (x - nd * ln2_64_hi) - nd * ln2_64_lo;
    q = rv_set1(1.0 / 120.0);
    q = q * r + rv_set1(1.0 / 24.0);
    q = q * r + rv_set1(1.0 / 6.0);
    q = q * r + rv_set1(0.5);
    q = q * r + rv_set1(1.0);
    *k = (rv_i)t - (rv_i)magic;
    return q * r;
}

/* T[j] = 2^(j/64) for each lane's j in [0, 64). */
static inline rv_d rv_exp2_table(rv_i j)
{
    return (rv_d){rv_exp2_64[j[0]], rv_exp2_64[j[1]], rv_exp2_64[j[2]], rv_exp2_64[j[3]]};
}

/* exp(x) for x <= 0 (inputs above 0 are taken as 0, below -746 as -746; a NaN lane
 * gives garbage the caller masks): exp(x) = 2^n * T[j] * exp(r) (rv_exp_reduce), put
 * together as T + T q so that the table's rounding dominates; 2^n is applied as
 * 2^(n1) 2^(n2), each a normal number, so that results in the subnormal range are
 * rounded once. exp(0) is exactly 1. */
static inline rv_d rv_exp_nonpos(rv_d x)
{
    rv_d q, tab, y;
    rv_i k, j, n, n1, n2;
    x = rv_select(x < rv_set1(-746.0), rv_set1(-746.0), x);
    x = rv_select(x > rv_set1(0.0), rv_set1(0.0), x);
    q = rv_exp_reduce(x, &k);                /* -68,900 < k <= 0 */
    j = k & 63;
    n = -(rv_i)((rv_u)(j - k) >> 6);         /* k = 64 n + j */
    tab = rv_exp2_table(j);
    y = tab + tab * q;
    n1 = -(rv_i)((rv_u)(-n) >> 1);
    n2 = n - n1;
    return (y * (rv_d)((n1 + 1023) << 52)) * (rv_d)((n2 + 1023) << 52);
}

/* exp(x) for -600 <= x <= 0, the same bits as rv_exp_nonpos: the same operations up
 * to 2^n, which here goes into the table's exponent (T[j] 2^n is exact, and so is the
 * scaling of T q and of the sum, every value staying normal: with x >= -600, n >= -866
 * and |q| >= 2^-77 unless q = 0). Other lanes give garbage. */
static inline rv_d rv_exp_near(rv_d x)
{
    rv_d q, tab;
    rv_i k, j;
    q = rv_exp_reduce(x, &k);
    j = k & 63;
    tab = rv_exp2_table(j);
    tab = (rv_d)((rv_i)tab + (rv_i)((rv_u)(k - j) << 46));  /* T[j] 2^n, k - j = 64 n */
    return tab + tab * q;
}

/* rv_exp_nonpos on the lanes of mask on (the others: garbage the caller masks), by
 * rv_exp_near when every such lane is in [-600, 0] (the same bits). */
static inline rv_d rv_exp_on(rv_d x, rv_i on)
{
    rv_i far = on & ~((x >= rv_set1(-600.0)) & (x <= rv_set1(0.0)));
    if ((far[0] | far[1]) | (far[2] | far[3]))
        return rv_exp_nonpos(x);
    return rv_exp_near(x);
}

/* Scalar form of the pass's function (same operations, same bits), for tests. */
static double refbbp_exp_nonpos(double x)
{
    rv_d v = rv_exp_on(rv_set1(x), (rv_i){-1, -1, -1, -1});
    return v[0];
}

/* The same by the general path alone, for tests. */
static double refbbp_exp_nonpos_far(double x)
{
    rv_d v = rv_exp_nonpos(rv_set1(x));
    return v[0];
}

/* The score of component kappa: sign rule, sc = -sign(b^x) and s = sc * kappa;
 * deviation rule, sc = h / n_p and s = |sc - kappa|. */
static inline rv_d rv_score(rv_d sc, rv_d k, int deviation)
{
    return deviation ? rv_abs(sc - k) : sc * k;
}

/* One scan of a tile's non-zero inputs: per row, kappa = (c A[p, q]) u[q] of each
 * non-zero input (into kbuf, list entry after list entry, four rows per vector), the
 * count of its non-zero components into nz and, with the sign rule, the maximum of
 * their scores into mx. Weights: wt[list_w[j] + lane_m[i]] (contig: lane_m[i] = i). */
static inline void rv_kappa(int64_t n_list, const int64_t *list_w, const double *list_u,
                            const double *wt, const int64_t *lane_m, int contig,
                            int64_t n4, const rv_d *c, const rv_d *sc, int with_max,
                            double *kbuf, rv_i *nz, rv_d *mx)
{
    int64_t i, j;
    for (j = 0; j < n_list; j++) {
        rv_d vu = rv_set1(list_u[j]);
        const double *w = wt + list_w[j];
        double *kb = kbuf + j * 4 * n4;
        for (i = 0; i < n4; i++) {
            rv_d wv, k;
            rv_i on;
            if (contig) {
                wv = rv_load(w + 4 * i);
            } else {
                const int64_t *lm = lane_m + 4 * i;
                wv = (rv_d){w[lm[0]], w[lm[1]], w[lm[2]], w[lm[3]]};
            }
            k = (c[i] * wv) * vu;
            on = k != rv_set1(0.0);
            nz[i] -= on;
            if (with_max) {
                rv_d s = sc[i] * k;
                mx[i] = rv_select(on & (s > mx[i]), s, mx[i]);
            }
            rv_store(kb + 4 * i, k);
        }
    }
}

/* The rows of one tile: output channels m0 + i (i < 4 * n4 <= REFBBP_TILE) of one
 * group at one output position, whose window lists n_sp kernel positions (column
 * offset off[t], kernel index kid[t]) and cg input channels.
 *
 *   wt       transposed kernel at (group, channel 0, kernel index 0, output channel
 *            m0): the weight of output channel m0 + m at (channel cc, kernel index k)
 *            is wt[(cc * k_prod + k) * mgp + m]
 *   nw4      the tile's full width in vectors (output channels m0 .. m0 + 4 nw4 - 1,
 *            zero-padded in wt past the group's last channel)
 *   gyf      per output channel of the full width (4 nw4 values), c * g (0: no
 *            gradient, or a row that sends nothing)
 *   lane_m   the output channel of each row of the tile, less m0 (the caller packs
 *            the rows that have something to send; padding rows have c = beta = 0)
 *   contig   lane_m[i] = i for every lane (the tile's rows all send): the pass reads
 *            the weights in place
 *   col0     column of channel 0 at offset 0; channel cc adds cc * stride_c
 *   u        the node's input values (read at the window's columns)
 *   lc, lb, lsc
 *            per row: slope c, beta, and the rule's row value (sign rule:
 *            -sign(b^x); deviation rule: h)
 *   list_col, list_w, list_u
 *            scratch of cg * n_sp entries (the window's non-zero inputs)
 *   ebuf     scratch of cg * n_sp * 4 * n4 values (kappa, then the softmax terms)
 *   acc_g    gradient accumulator (NULL: no gradient in the tile)
 *   acc_b    BBp accumulator (NULL: no beta in the tile)
 * Output per row: lnz, its number of non-zero components; lratio, beta / (sum of its
 * softmax terms), or 0 if it has no non-zero component. A row whose ratio is not finite
 * sent nothing; the caller reports it (as it handles rows with beta and no non-zero
 * component, SPEC 3.6).
 */
REFBBP_CLONES static void refbbp_window_tile(
    int64_t n4, const double *wt, int64_t nw4, int64_t cg, int64_t k_prod, int64_t mgp,
    int64_t n_sp, const int64_t *off, const int64_t *kid, int64_t col0, int64_t stride_c,
    const double *u, const double *gyf, const int64_t *lane_m, int contig,
    const double *lc, const double *lb, const double *lsc, int deviation,
    double temperature, int64_t *list_col, int64_t *list_w, double *list_u,
    double *ebuf, double *acc_g, double *acc_b, int64_t *lnz, double *lratio)
{
    rv_d c[RV_N], sc[RV_N], mx[RV_N], tot[RV_N], ratio[RV_N];
    rv_i nz[RV_N];
    int64_t i, j, cc, t, n_list = 0, col, wo;
    double uq;
    for (i = 0; i < n4; i++) {
        c[i] = rv_load(lc + 4 * i);
        sc[i] = rv_load(lsc + 4 * i);
        mx[i] = rv_set1(-__builtin_inf());
        tot[i] = rv_set1(0.0);
        nz[i] = (rv_i){0, 0, 0, 0};
    }
    /* SPEC 2: g_u += (A^x)^T g_h, every structural entry, over the tile's full width
     * (four partial sums, then in one fixed order); and the list of the non-zero
     * inputs. */
    for (cc = 0; cc < cg; cc++) {
        for (t = 0; t < n_sp; t++) {
            col = col0 + cc * stride_c + off[t];
            wo = (cc * k_prod + kid[t]) * mgp;
            if (acc_g != NULL) {
                const double *w = wt + wo;
                rv_d s0 = rv_set1(0.0), s1 = s0, s2 = s0, s3 = s0;
                for (i = 0; i + 4 <= nw4; i += 4) {
                    s0 += rv_load(gyf + 4 * i) * rv_load(w + 4 * i);
                    s1 += rv_load(gyf + 4 * i + 4) * rv_load(w + 4 * i + 4);
                    s2 += rv_load(gyf + 4 * i + 8) * rv_load(w + 4 * i + 8);
                    s3 += rv_load(gyf + 4 * i + 12) * rv_load(w + 4 * i + 12);
                }
                for (; i < nw4; i++)
                    s0 += rv_load(gyf + 4 * i) * rv_load(w + 4 * i);
                acc_g[col] += rv_sum((s0 + s1) + (s2 + s3));
            }
            uq = u[col];
            if (uq != 0.0) {
                list_col[n_list] = col;
                list_w[n_list] = wo;
                list_u[n_list] = uq;
                n_list++;
            }
        }
    }
    if (acc_b == NULL)
        return;
    /* SPEC 3.2: kappa = (c A[p, q]) u[q], non-zero components only (into ebuf): their
     * count n_p and (SPEC 3.3-3.4) their maximum score; the deviation rule's scores
     * s = |h / n_p - kappa| need n_p first, so they take a second scan. */
    rv_kappa(n_list, list_w, list_u, wt, lane_m, contig, n4, c, sc, !deviation, ebuf, nz,
             mx);
    if (deviation) {
        for (i = 0; i < n4; i++) {
            rv_d n = {(double)nz[i][0], (double)nz[i][1], (double)nz[i][2],
                      (double)nz[i][3]};
            sc[i] = sc[i] / n;
        }
        for (j = 0; j < n_list; j++) {
            const double *kb = ebuf + j * 4 * n4;
            for (i = 0; i < n4; i++) {
                rv_d k = rv_load(kb + 4 * i);
                rv_d s = rv_abs(sc[i] - k);
                mx[i] = rv_select((k != rv_set1(0.0)) & (s > mx[i]), s, mx[i]);
            }
        }
    }
    /* SPEC 3.4: the softmax terms e = exp((s - max) / T) (1 at the maximum) and sums,
     * each over kappa in place. */
    for (j = 0; j < n_list; j++) {
        double *eb = ebuf + j * 4 * n4;
        for (i = 0; i < n4; i++) {
            rv_d k = rv_load(eb + 4 * i);
            rv_i on = k != rv_set1(0.0);
            rv_d s = rv_score(sc[i], k, deviation);
            rv_i top = s == mx[i];
            rv_d e;
            if (temperature == __builtin_inf())
                e = rv_set1(1.0);
            else if (temperature == 0.0)
                e = rv_and(top, rv_set1(1.0));
            else if (temperature == 1.0)
                e = rv_select(top, rv_set1(1.0), rv_exp_on(s - mx[i], on));
            else
                e = rv_select(top, rv_set1(1.0),
                              rv_exp_on((s - mx[i]) / rv_set1(temperature), on));
            e = rv_and(on, e);
            tot[i] += e;
            rv_store(eb + 4 * i, e);
        }
    }
    /* SPEC 3.5: messages e * (beta / total). */
    for (i = 0; i < n4; i++) {
        rv_i none = nz[i] == (rv_i){0, 0, 0, 0};
        ratio[i] = rv_and(~none, rv_load(lb + 4 * i) / tot[i]);
        rv_store(lratio + 4 * i, ratio[i]);
        memcpy(lnz + 4 * i, &nz[i], sizeof nz[i]);
        /* a ratio that is not finite sends nothing (x - x is 0 only if x is finite) */
        ratio[i] = rv_and((ratio[i] - ratio[i]) == rv_set1(0.0), ratio[i]);
    }
    for (j = 0; j < n_list; j++) {
        const double *eb = ebuf + j * 4 * n4;
        rv_d s = rv_set1(0.0);
        for (i = 0; i < n4; i++)
            s += rv_load(eb + 4 * i) * ratio[i];
        acc_b[list_col[j]] += rv_sum(s);
    }
}

#else
/* Without vector extensions the kernel never calls these (VECTOR_PASS is False). */
#define REFBBP_VECTOR 0
#define refbbp_exp_nonpos(x) (0.0)
#define refbbp_exp_nonpos_far(x) (0.0)
#define refbbp_window_tile(...) ((void)0)
#endif

#endif /* REFBBP_VECTOR_H */
