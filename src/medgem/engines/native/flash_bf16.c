/* Non-causal attention for vision towers on CPUs with AVX512-BF16, flash-style.
 *
 * Why: PyTorch's CPU scaled-dot-product attention ran SigLIP's 4,096-patch attention at 120-150
 * GFLOP/s on a 2-core Zen 4/5 whose bf16 GEMM peak is ~400: the QK^T GEMM has only 72 terms per
 * score (head_dim), too few for oneDNN's generic kernels, and the scores go through memory.
 * Here QK^T and PV are register-blocked VDPBF16PS loops (bf16 pairs in, fp32 accumulators), the
 * scores stay fp32 in an L1/L2-sized block between them, and the softmax is the flash running
 * maximum and sum per query row, so no score ever reaches memory at full size.
 *
 * Precision is PyTorch's bf16 SDPA's: bf16 inputs, fp32 scores, fp32 softmax, probabilities
 * rounded to bf16 for the PV product (as PyTorch's CPU flash kernel does), fp32 accumulation and
 * an fp32 output.
 *
 * Layout: q (heads, nq, d), k and v (heads, nk, d), bf16 as uint16, contiguous; out (heads, nq,
 * d) float32. Any nq, nk >= 1 and d >= 1: keys are padded to the key block (the padding's scores
 * are -inf), d to an even count for QK^T and to 16 for PV (zeros).
 *
 * Built by medgem.engines.native on first use with the machine's gcc, and loaded only after a
 * child process has run it on this CPU (a CPU without AVX512-BF16 never loads it).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS 60  /* query rows per task */
#define KEYS 256 /* keys per block between the two products */
#define MR 4     /* query rows per QK register tile: 4 rows x NR x 16 keys = 16 accumulators */
#define NR 4     /* zmm of keys (16 each) per QK tile */
#define PMR 5    /* query rows per PV register tile: 5 rows x 80 dims = 25 accumulators */
_Static_assert(ROWS % MR == 0 && ROWS % PMR == 0, "a task's rows split into whole tiles");
_Static_assert(KEYS % (16 * NR) == 0, "a key block splits into whole QK tiles");

static inline size_t round_up(size_t x, size_t m) { return (x + m - 1) / m * m; }

/* exp(x) for x <= 0 (and -inf -> 0): 2^n * p(r), r in [-ln2/2, ln2/2], the degree-4 Taylor
 * polynomial: relative error <= 4.3e-5, fifty times below the bf16 rounding (2^-9) that every
 * probability gets next. */
static inline __m512 exp_ps(__m512 x) {
    const __m512 log2e = _mm512_set1_ps(1.44269504088896341f);
    const __m512 ln2_hi = _mm512_set1_ps(0.693359375f);
    const __m512 ln2_lo = _mm512_set1_ps(-2.12194440e-4f);
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, ln2_hi, x);
    r = _mm512_fnmadd_ps(n, ln2_lo, r);
    __m512 p = _mm512_set1_ps(1.0f / 24.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* K of one head as bf16 pairs along d: kp[pair][key][2], keys padded to nk_pad with zeros. */
static void pack_k(const uint16_t *k, uint16_t *kp, int nk, int nk_pad, int d, int pairs) {
    memset(kp, 0, (size_t)pairs * nk_pad * 2 * sizeof(uint16_t));
    for (int j = 0; j < nk; j++)
        for (int c = 0; c < d; c++)
            kp[((size_t)(c / 2) * nk_pad + j) * 2 + (c % 2)] = k[(size_t)j * d + c];
}

/* V of one head as bf16 pairs along keys: vp[key pair][dim][2], dims padded to dv (16s). */
static void pack_v(const uint16_t *v, uint16_t *vp, int nk, int nk_pad, int d, int dv) {
    memset(vp, 0, (size_t)(nk_pad / 2) * dv * 2 * sizeof(uint16_t));
    for (int j = 0; j < nk; j++)
        for (int c = 0; c < d; c++)
            vp[((size_t)(j / 2) * dv + c) * 2 + (j % 2)] = v[(size_t)j * d + c];
}

/* One task: ROWS query rows of one head against every key. */
static void attend_rows(const uint32_t *qpairs, int rows, const uint16_t *kp, const uint16_t *vp,
                        int nk, int nk_pad, int pairs, int dv, int d, float scale, float *out,
                        float *s, uint16_t *p, float *o) {
    float row_max[ROWS], row_sum[ROWS];
    for (int i = 0; i < ROWS; i++) { row_max[i] = -INFINITY; row_sum[i] = 0.0f; }
    memset(o, 0, sizeof(float) * ROWS * dv);
    const __m512 vscale = _mm512_set1_ps(scale);
    for (int k0 = 0; k0 < nk_pad; k0 += KEYS) {
        /* scores s[ROWS][KEYS] = scale * q . k */
        for (int i0 = 0; i0 < ROWS; i0 += MR) {
            for (int j0 = 0; j0 < KEYS; j0 += 16 * NR) {
                __m512 acc[MR][NR];
                for (int a = 0; a < MR; a++)
                    for (int b = 0; b < NR; b++) acc[a][b] = _mm512_setzero_ps();
                const uint16_t *kcol = kp + (size_t)(k0 + j0) * 2;
                for (int c = 0; c < pairs; c++) {
                    const uint16_t *kc = kcol + (size_t)c * nk_pad * 2;
                    __m512bh kv[NR];
                    for (int b = 0; b < NR; b++) kv[b] = (__m512bh)_mm512_loadu_si512(kc + b * 32);
                    for (int a = 0; a < MR; a++) {
                        __m512bh qa = (__m512bh)_mm512_set1_epi32((int)qpairs[(size_t)(i0 + a) * pairs + c]);
                        for (int b = 0; b < NR; b++) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], qa, kv[b]);
                    }
                }
                for (int a = 0; a < MR; a++)
                    for (int b = 0; b < NR; b++)
                        _mm512_storeu_ps(s + (size_t)(i0 + a) * KEYS + j0 + 16 * b, _mm512_mul_ps(acc[a][b], vscale));
            }
        }
        int valid = nk - k0 < KEYS ? nk - k0 : KEYS;
        /* running max and sum, probabilities in bf16, the output rescaled */
        for (int i = 0; i < ROWS; i++) {
            float *si = s + (size_t)i * KEYS;
            for (int j = valid; j < KEYS; j++) si[j] = -INFINITY;
            __m512 mx = _mm512_set1_ps(-INFINITY);
            for (int j = 0; j < KEYS; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(si + j));
            float block_max = _mm512_reduce_max_ps(mx);
            float new_max = block_max > row_max[i] ? block_max : row_max[i];
            float correction = row_max[i] == -INFINITY ? 0.0f : expf(row_max[i] - new_max);
            __m512 vmax = _mm512_set1_ps(new_max), sum = _mm512_setzero_ps();
            uint16_t *pi = p + (size_t)i * KEYS;
            for (int j = 0; j < KEYS; j += 16) {
                __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(si + j), vmax));
                __m256bh h = _mm512_cvtneps_pbh(e);
                /* the sum of what PV multiplies: the rounded probabilities */
                sum = _mm512_add_ps(sum, _mm512_cvtpbh_ps(h));
                _mm256_storeu_si256((__m256i *)(pi + j), (__m256i)h);
            }
            row_sum[i] = row_sum[i] * correction + _mm512_reduce_add_ps(sum);
            row_max[i] = new_max;
            if (correction != 1.0f) {
                __m512 vc = _mm512_set1_ps(correction);
                for (int c = 0; c < dv; c += 16)
                    _mm512_storeu_ps(o + (size_t)i * dv + c, _mm512_mul_ps(_mm512_loadu_ps(o + (size_t)i * dv + c), vc));
            }
        }
        /* o[ROWS][dv] += p . v over this block's keys, two keys per VDPBF16PS */
        const uint16_t *vblock = vp + (size_t)(k0 / 2) * dv * 2;
        for (int i0 = 0; i0 < ROWS; i0 += PMR) {
            for (int c0 = 0; c0 < dv; c0 += 16 * 5) {
                int nb = (dv - c0) / 16 < 5 ? (dv - c0) / 16 : 5;
                __m512 acc[PMR][5];
                for (int a = 0; a < PMR; a++)
                    for (int b = 0; b < 5; b++)
                        acc[a][b] = b < nb ? _mm512_loadu_ps(o + (size_t)(i0 + a) * dv + c0 + 16 * b) : _mm512_setzero_ps();
                const uint32_t *prow = (const uint32_t *)(p + (size_t)i0 * KEYS);
                for (int jp = 0; jp < KEYS / 2; jp++) {
                    const uint16_t *vj = vblock + ((size_t)jp * dv + c0) * 2;
                    __m512bh pa[PMR];
                    for (int a = 0; a < PMR; a++) pa[a] = (__m512bh)_mm512_set1_epi32((int)prow[(size_t)a * (KEYS / 2) + jp]);
                    for (int b = 0; b < nb; b++) {
                        __m512bh vv = (__m512bh)_mm512_loadu_si512(vj + b * 32);
                        for (int a = 0; a < PMR; a++) acc[a][b] = _mm512_dpbf16_ps(acc[a][b], pa[a], vv);
                    }
                }
                for (int a = 0; a < PMR; a++)
                    for (int b = 0; b < nb; b++)
                        _mm512_storeu_ps(o + (size_t)(i0 + a) * dv + c0 + 16 * b, acc[a][b]);
            }
        }
    }
    for (int i = 0; i < rows; i++) {
        float inv = 1.0f / row_sum[i];
        for (int c = 0; c < d; c++) out[(size_t)i * d + c] = o[(size_t)i * dv + c] * inv;
    }
}

/* 0 on success, 1 when a buffer could not be allocated. */
int medgem_flash_bf16(const uint16_t *q, const uint16_t *k, const uint16_t *v, float *out,
                      int heads, int nq, int nk, int d, float scale, int threads) {
    const int pairs = (d + 1) / 2;
    const int dv = (int)round_up((size_t)d, 16);
    const int nk_pad = (int)round_up((size_t)nk, KEYS);
    const int blocks = (nq + ROWS - 1) / ROWS;
    const size_t kp_len = (size_t)pairs * nk_pad * 2, vp_len = (size_t)(nk_pad / 2) * dv * 2;
    uint16_t *kp = aligned_alloc(64, round_up(kp_len * heads * sizeof(uint16_t), 64));
    uint16_t *vp = aligned_alloc(64, round_up(vp_len * heads * sizeof(uint16_t), 64));
    if (!kp || !vp) { free(kp); free(vp); return 1; }
    int failed = 0;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (int h = 0; h < heads; h++) {
        pack_k(k + (size_t)h * nk * d, kp + kp_len * h, nk, nk_pad, d, pairs);
        pack_v(v + (size_t)h * nk * d, vp + vp_len * h, nk, nk_pad, d, dv);
    }
    #pragma omp parallel num_threads(threads) reduction(|:failed)
    {
        float *s = aligned_alloc(64, sizeof(float) * ROWS * KEYS);
        uint16_t *p = aligned_alloc(64, sizeof(uint16_t) * ROWS * KEYS);
        float *o = aligned_alloc(64, sizeof(float) * ROWS * dv);
        uint32_t *qpairs = aligned_alloc(64, sizeof(uint32_t) * ROWS * pairs);
        int ready = s && p && o && qpairs;
        if (!ready) failed = 1;
        /* every thread meets the loop (a work-sharing construct), with buffers or not */
        #pragma omp for schedule(dynamic, 1)
        for (int task = 0; task < heads * blocks; task++) {
            if (!ready) continue;
            int h = task / blocks, r0 = (task % blocks) * ROWS;
            int rows = nq - r0 < ROWS ? nq - r0 : ROWS;
            uint16_t *qp16 = (uint16_t *)qpairs;
            memset(qpairs, 0, sizeof(uint32_t) * ROWS * pairs);
            for (int i = 0; i < rows; i++)
                memcpy(qp16 + (size_t)i * pairs * 2, q + ((size_t)h * nq + r0 + i) * d, sizeof(uint16_t) * d);
            attend_rows(qpairs, rows, kp + kp_len * h, vp + vp_len * h, nk, nk_pad, pairs, dv, d,
                        scale, out + ((size_t)h * nq + r0) * d, s, p, o);
        }
        free(s); free(p); free(o); free(qpairs);
    }
    free(kp); free(vp);
    return failed;
}
