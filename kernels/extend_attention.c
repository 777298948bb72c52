/* Attention of a prefill (an extend forward) over the paged KV pool, on AVX-512.
 *
 * Part of cpu_decode.c's build (included at its end: it runs on that file's thread pool and
 * uses its vector helpers). For each request of the batch, its E new tokens at positions
 * P .. P + E - 1 (P: the prefix already in the pool) attend causally over the request's keys
 * 0 .. position, read through ``req_to_token`` as the decode step reads them: no dense copy of
 * K, no mask. Grouped-query: the G query heads of a KV head share every key and value read.
 *
 * Flash attention's blocking with the query rows across the vector lanes: a unit is (request,
 * KV head, block of BQ positions), its XA_ROWS rows the block's positions x the group's heads
 * (position-major, padded), held transposed (``qt``: [D][rows], bfloat16 as [D / 2][rows]
 * pairs) as is its output (``ot``: [D][rows] float32). It walks the keys in blocks of XA_BK up
 * to its last position; for a key block:
 *   - scores s[key][rows] = q . k, 16 rows a vector, a key's element (bfloat16: a pair of
 *     elements, one ``vdpbf16ps``) broadcast from its row in the pool;
 *   - the online softmax per row, lane by lane (no horizontal sums): max, exp, sums, and the
 *     weights p[key][rows] (bfloat16: rounded, pairs of keys, as torch's CPU flash attention
 *     rounds them for a bfloat16 input);
 *   - ot[d][rows] += p[key][rows] v_key[d], v's element broadcast (bfloat16: the values of a
 *     pair of keys, packed once per call in ``vpk``).
 * A unit of at most 16 rows (a prefill's last few positions) runs one row vector instead of
 * XA_RV. A request of one new token (a decode row riding in a prefill's forward) is not a unit
 * at all: the decode step's attention (cpu_decode.c's ``attention``, the keys along the lanes)
 * takes those rows after the units, where a unit would hold the G rows of one position. Each
 * row's sums run over the key blocks in order, whatever thread runs its unit: the bits do not
 * depend on the thread count or the batch's other requests.
 */

#if defined(__AVX512F__)

#define XA_BK 64                /* keys a block */
#define XA_RV 6                 /* row vectors a unit */
#define XA_ROWS (16 * XA_RV)    /* rows a unit (positions x the group's heads, padded) */
#define XA_DMAX 128             /* largest head_dim built */
#define XA_DC 4                 /* output dimensions a P V pass holds (XA_DC x XA_RV sums) */

typedef struct {
    const void *q;              /* [N, Hq, D] */
    const void *kc, *vc;        /* the layer's pool, [slots, Hkv, D] */
    int bf;                     /* 1: bfloat16 q, pool and out; 0: float32 */
    const int64_t *table;       /* req_to_token, rows ``stride`` apart */
    int64_t stride;
    const int64_t *rows;        /* per request: its table row */
    const int64_t *prefix, *ext; /* per request: tokens in the pool before, tokens new */
    const int64_t *tok0;        /* per request: its first token in q / out */
    const int64_t *unit0;       /* [R + 1]: each request's first unit */
    const int64_t *vpk0;        /* [R + 1]: each request's packed V in ``vpk`` (uint32s from its
                                 * start; none for a decode row), then the end */
    uint32_t *vpk;              /* bfloat16: per request, KV head and pair of keys, D pairs */
    int Hq, Hkv, D, BQ;         /* BQ: positions a unit */
    float scale;
    void *out;                  /* [N, Hq, D] */
} xattn_args;

/* Positions a unit: as many as fill XA_ROWS rows with the group's heads. */
INLINE int xattn_bq(int G) { return XA_ROWS / G; }

INLINE int64_t xattn_seq(const xattn_args *a, int64_t r) { return a->prefix[r] + a->ext[r]; }

/* ---- bfloat16 V, packed in pairs of keys ---- */

/* vpk's units: (request, KV head, 32 pairs of keys). */
#define XA_PACK_PAIRS 32

INLINE int64_t xattn_pairs(const xattn_args *a, int64_t r) { return (xattn_seq(a, r) + 1) / 2; }

/* A request of one new token (a decode row riding in a prefill's forward) is attended by the
 * decode step's kernel (``xattn_decode_rows``): the keys along the lanes, as a decode step
 * reads them, where a unit of these would hold G of its 16 rows. */
INLINE int xattn_decode_row(const xattn_args *a, int64_t r) { return a->ext[r] == 1; }

/* Pack units of request r (none for a decode row: its V is read as it is). */
INLINE int64_t xattn_packs(const xattn_args *a, int64_t r) {
    if (xattn_decode_row(a, r)) return 0;
    return (xattn_pairs(a, r) + XA_PACK_PAIRS - 1) / XA_PACK_PAIRS * a->Hkv;
}

/* Packs units [lo, hi) of (request, KV head, 32 key pairs): for pair jp and dimension d the
 * 32 bits (V_2jp[d], V_2jp+1[d]); a key past the sequence packs as zeros. */
static void xattn_pack_v(void *p, int tid, int64_t lo, int64_t hi) {
    (void)tid;
    const xattn_args *a = (const xattn_args *)p;
    const int D = a->D;
    const int64_t HD = (int64_t)a->Hkv * D;
    const uint16_t *vc = (const uint16_t *)a->vc;
    int64_t r = 0, u0 = 0;
    for (int64_t u = lo; u < hi; u++) {
        int64_t per = xattn_packs(a, r);
        while (u >= u0 + per) {
            u0 += per;
            r++;
            per = xattn_packs(a, r);
        }
        const int64_t chunks = per / a->Hkv, kvh = (u - u0) / chunks, c = (u - u0) % chunks;
        const int64_t npairs = xattn_pairs(a, r), seq = xattn_seq(a, r);
        const int64_t *slots = a->table + a->rows[r] * a->stride;
        uint32_t *dst = a->vpk + a->vpk0[r] + kvh * npairs * D;
        const int64_t jp1 = (c + 1) * XA_PACK_PAIRS < npairs ? (c + 1) * XA_PACK_PAIRS : npairs;
        for (int64_t jp = c * XA_PACK_PAIRS; jp < jp1; jp++) {
            const uint16_t *v0 = vc + slots[2 * jp] * HD + kvh * D;
            const uint16_t *v1 = 2 * jp + 1 < seq ? vc + slots[2 * jp + 1] * HD + kvh * D : NULL;
            for (int d = 0; d < D; d += 16) {
                __m512i lo16 = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(v0 + d)));
                __m512i hi16 = v1 ? _mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)(v1 + d)))
                                  : _mm512_setzero_si512();
                _mm512_storeu_si512(dst + jp * D + d, _mm512_or_si512(lo16, _mm512_slli_epi32(hi16, 16)));
            }
        }
    }
}

/* ---- one unit ---- */

/* Scores of keys k0 + j (j < nj, nj <= XA_BK) for the unit's rows: sc[j][rows] = q . k_j.
 * ``key[j]``: key j's row in the pool (its KV head's D elements). */
INLINE void xattn_scores(const void *qt, const void *const *key, int nj,
                         float *sc, const int D, const int bf, const int RV) {
    for (int j0 = 0; j0 < nj; j0 += 4) {
        __m512 acc[4][XA_RV];
        for (int jj = 0; jj < 4; jj++)
            for (int rv = 0; rv < RV; rv++) acc[jj][rv] = _mm512_setzero_ps();
        const void *kr[4];
        for (int jj = 0; jj < 4; jj++) kr[jj] = key[j0 + jj < nj ? j0 + jj : j0];
        if (bf) {
#if BF16_DOT
            const uint32_t *q = (const uint32_t *)qt;
            for (int p = 0; p < D / 2; p++) {
                /* the 4 keys' broadcasts held, a row vector loaded once for them */
                __m512bh kb[4];
                for (int jj = 0; jj < 4; jj++)
                    kb[jj] = (__m512bh)_mm512_set1_epi32(((const int32_t *)kr[jj])[p]);
                for (int rv = 0; rv < RV; rv++) {
                    const __m512bh qv = (__m512bh)_mm512_loadu_si512(q + p * XA_ROWS + 16 * rv);
                    for (int jj = 0; jj < 4; jj++)
                        acc[jj][rv] = _mm512_dpbf16_ps(acc[jj][rv], qv, kb[jj]);
                }
            }
#endif
        } else {
            const float *q = (const float *)qt;
            for (int d = 0; d < D; d++) {
                __m512 kb[4];
                for (int jj = 0; jj < 4; jj++) kb[jj] = _mm512_set1_ps(((const float *)kr[jj])[d]);
                for (int rv = 0; rv < RV; rv++) {
                    const __m512 qv = _mm512_loadu_ps(q + d * XA_ROWS + 16 * rv);
                    for (int jj = 0; jj < 4; jj++)
                        acc[jj][rv] = _mm512_fmadd_ps(qv, kb[jj], acc[jj][rv]);
                }
            }
        }
        for (int jj = 0; jj < 4 && j0 + jj < nj; jj++)
            for (int rv = 0; rv < RV; rv++)
                _mm512_storeu_ps(sc + (j0 + jj) * XA_ROWS + 16 * rv, acc[jj][rv]);
    }
}

INLINE __m512 xattn_exp(__m512 x) {
    vfw v;
    memcpy(&v, &x, 64);
    v = vexp(v);
    memcpy(&x, &v, 64);
    return x;
}

/* The online softmax over keys k0 + j (j < nj) for every row: each lane's max (``m``), sum of
 * weights (``l``), the factor its earlier sums shrink by (``alpha``), and the weights in
 * ``pw``: float32 [j][rows], or bfloat16 pairs of keys [j / 2][rows] (a key past nj weighs 0).
 * ``pos``: each row's position; a key past it weighs 0. */
INLINE void xattn_softmax(const xattn_args *a, float *sc, int64_t k0, int nj, const int32_t *pos,
                          __m512 *m, __m512 *l, __m512 *alpha, void *pw, const int bf,
                          const int RV) {
    const __m512 scale = _mm512_set1_ps(a->scale), ninf = _mm512_set1_ps(-INFINITY);
    for (int rv = 0; rv < RV; rv++) {
        const __m512i posv = _mm512_loadu_si512(pos + 16 * rv);
        __m512 mx = m[rv];
        for (int j = 0; j < nj; j++) {
            const __mmask16 seen = _mm512_cmpge_epi32_mask(posv, _mm512_set1_epi32((int)(k0 + j)));
            const __m512 x = _mm512_mask_mul_ps(ninf, seen, _mm512_loadu_ps(sc + j * XA_ROWS + 16 * rv), scale);
            _mm512_storeu_ps(sc + j * XA_ROWS + 16 * rv, x);
            mx = _mm512_max_ps(mx, x);
        }
        /* every row has seen key 0 by its first block: mx is finite, and exp(-inf) = 0 */
        alpha[rv] = xattn_exp(_mm512_sub_ps(m[rv], mx));
        m[rv] = mx;
        __m512 sum = _mm512_setzero_ps();
        if (bf) {
#if BF16_DOT
            uint32_t *pp = (uint32_t *)pw;
            for (int j = 0; j < nj; j += 2) {
                const __m512 p0 = xattn_exp(_mm512_sub_ps(_mm512_loadu_ps(sc + j * XA_ROWS + 16 * rv), mx));
                const __m512 p1 = j + 1 < nj
                    ? xattn_exp(_mm512_sub_ps(_mm512_loadu_ps(sc + (j + 1) * XA_ROWS + 16 * rv), mx))
                    : _mm512_setzero_ps();
                sum = _mm512_add_ps(sum, _mm512_add_ps(p0, p1));
                const __m512i lo16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(p0));
                const __m512i hi16 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(p1));
                _mm512_storeu_si512(pp + (j / 2) * XA_ROWS + 16 * rv,
                                    _mm512_or_si512(lo16, _mm512_slli_epi32(hi16, 16)));
            }
#endif
        } else {
            float *pp = (float *)pw;
            for (int j = 0; j < nj; j++) {
                const __m512 p = xattn_exp(_mm512_sub_ps(_mm512_loadu_ps(sc + j * XA_ROWS + 16 * rv), mx));
                sum = _mm512_add_ps(sum, p);
                _mm512_storeu_ps(pp + j * XA_ROWS + 16 * rv, p);
            }
        }
        l[rv] = _mm512_fmadd_ps(l[rv], alpha[rv], sum);
    }
}

/* ot[d][rows] = ot[d][rows] * alpha + sum_j p[j][rows] v_j[d] over keys k0 + j (j < nj).
 * ``val[j]``: float32, key j's V row in the pool; bfloat16, ``vp``: the block's packed pairs. */
INLINE void xattn_pv(const void *pw, const void *const *val, const uint32_t *vp, int nj,
                     const __m512 *alpha, float *ot, const int D, const int bf, const int RV) {
    for (int d0 = 0; d0 < D; d0 += XA_DC) {
        __m512 acc[XA_DC][XA_RV];
        for (int dd = 0; dd < XA_DC; dd++)
            for (int rv = 0; rv < RV; rv++)
                acc[dd][rv] = _mm512_mul_ps(_mm512_loadu_ps(ot + (d0 + dd) * XA_ROWS + 16 * rv), alpha[rv]);
        if (bf) {
#if BF16_DOT
            const uint32_t *pp = (const uint32_t *)pw;
            for (int jp = 0; jp < (nj + 1) / 2; jp++) {
                __m512bh vb[XA_DC];
                for (int dd = 0; dd < XA_DC; dd++)
                    vb[dd] = (__m512bh)_mm512_set1_epi32((int)vp[jp * D + d0 + dd]);
                for (int rv = 0; rv < RV; rv++) {
                    const __m512bh pv = (__m512bh)_mm512_loadu_si512(pp + jp * XA_ROWS + 16 * rv);
                    for (int dd = 0; dd < XA_DC; dd++)
                        acc[dd][rv] = _mm512_dpbf16_ps(acc[dd][rv], pv, vb[dd]);
                }
            }
#endif
        } else {
            const float *pp = (const float *)pw;
            for (int j = 0; j < nj; j++) {
                __m512 vb[XA_DC];
                for (int dd = 0; dd < XA_DC; dd++) vb[dd] = _mm512_set1_ps(((const float *)val[j])[d0 + dd]);
                for (int rv = 0; rv < RV; rv++) {
                    const __m512 pv = _mm512_loadu_ps(pp + j * XA_ROWS + 16 * rv);
                    for (int dd = 0; dd < XA_DC; dd++)
                        acc[dd][rv] = _mm512_fmadd_ps(pv, vb[dd], acc[dd][rv]);
                }
            }
        }
        for (int dd = 0; dd < XA_DC; dd++)
            for (int rv = 0; rv < RV; rv++)
                _mm512_storeu_ps(ot + (d0 + dd) * XA_ROWS + 16 * rv, acc[dd][rv]);
    }
}

/* One unit: request ``req``, KV head ``kvh``, positions blk * BQ ... Rows are position-major
 * (row = i * G + g); rows past the unit's last are padding (zero queries at its last position,
 * never written out). */
INLINE void xattn_unit_d(const xattn_args *a, int64_t req, int kvh, int64_t blk, const int D,
                         const int bf, const int RV) {
    const int G = a->Hq / a->Hkv, es = bf ? 2 : 4;
    const int64_t P = a->prefix[req], E = a->ext[req], i0 = blk * a->BQ;
    const int npos = (int)(E - i0 < a->BQ ? E - i0 : a->BQ), nrows = npos * G;
    const int64_t HD = (int64_t)a->Hkv * D, qrow = (int64_t)a->Hq * D;
    float qt_f[XA_DMAX * XA_ROWS] __attribute__((aligned(64))); /* bfloat16: the pairs' bits */
    float ot[XA_DMAX * XA_ROWS] __attribute__((aligned(64)));
    float sc[XA_BK * XA_ROWS] __attribute__((aligned(64)));
    float pw[XA_BK * XA_ROWS] __attribute__((aligned(64)));
    int32_t pos[XA_ROWS] __attribute__((aligned(64)));
    const char *qbase = (const char *)a->q + (a->tok0[req] + i0) * qrow * es;
    for (int row = 0; row < 16 * RV; row++) {
        const int i = row < nrows ? row / G : npos - 1;
        pos[row] = (int32_t)(P + i0 + i);
        if (bf) {
            uint32_t *qt = (uint32_t *)qt_f;
            const uint32_t *q = (const uint32_t *)(qbase + ((int64_t)i * qrow + (kvh * G + row % G) * D) * es);
            for (int p = 0; p < D / 2; p++) qt[p * XA_ROWS + row] = row < nrows ? q[p] : 0;
        } else {
            const float *q = (const float *)(qbase + ((int64_t)i * qrow + (kvh * G + row % G) * D) * es);
            for (int d = 0; d < D; d++) qt_f[d * XA_ROWS + row] = row < nrows ? q[d] : 0.0f;
        }
    }
    memset(ot, 0, sizeof(float) * D * XA_ROWS);
    __m512 m[XA_RV], l[XA_RV], alpha[XA_RV];
    for (int rv = 0; rv < RV; rv++) {
        m[rv] = _mm512_set1_ps(-INFINITY);
        l[rv] = _mm512_setzero_ps();
    }
    const int64_t *slots = a->table + a->rows[req] * a->stride;
    const int64_t last = P + i0 + npos - 1, npairs = xattn_pairs(a, req);
    const uint32_t *vpk = bf ? a->vpk + a->vpk0[req] + kvh * npairs * D : NULL;
    const char *kc = (const char *)a->kc, *vc = (const char *)a->vc;
    const void *key[XA_BK], *val[XA_BK];
    for (int64_t k0 = 0; k0 <= last; k0 += XA_BK) {
        const int nj = (int)(last + 1 - k0 < XA_BK ? last + 1 - k0 : XA_BK);
        for (int j = 0; j < nj; j++) {
            key[j] = kc + (slots[k0 + j] * HD + kvh * D) * es;
            val[j] = vc + (slots[k0 + j] * HD + kvh * D) * es;
        }
        xattn_scores(qt_f, key, nj, sc, D, bf, RV);
        xattn_softmax(a, sc, k0, nj, pos, m, l, alpha, pw, bf, RV);
        xattn_pv(pw, val, vpk ? vpk + (k0 / 2) * D : NULL, nj, alpha, ot, D, bf, RV);
    }
    float inv[XA_ROWS];
    for (int rv = 0; rv < RV; rv++)
        _mm512_storeu_ps(inv + 16 * rv, _mm512_div_ps(_mm512_set1_ps(1.0f), l[rv]));
    char *obase = (char *)a->out + (a->tok0[req] + i0) * qrow * es;
    /* a row's outputs are a column of ot: 16 at a time by a gather */
    const __m512i col = _mm512_mullo_epi32(
        _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        _mm512_set1_epi32(XA_ROWS));
    for (int row = 0; row < nrows; row++) {
        const int64_t at = ((int64_t)(row / G) * qrow + (kvh * G + row % G) * D) * es;
        const __m512 s = _mm512_set1_ps(inv[row]);
        for (int d = 0; d < D; d += 16) {
            const __m512 y = _mm512_mul_ps(_mm512_i32gather_ps(col, ot + d * XA_ROWS + row, 4), s);
            if (bf) {
#if BF16_DOT
                _mm256_storeu_si256((__m256i *)((uint16_t *)(obase + at) + d),
                                    (__m256i)_mm512_cvtneps_pbh(y));
#endif
            } else {
                _mm512_storeu_ps((float *)(obase + at) + d, y);
            }
        }
    }
}

/* Units are numbered request by request, KV head by KV head, the last block of positions
 * first (the longest units start first, so the threads end together). */
static void xattn_units(void *p, int tid, int64_t lo, int64_t hi) {
    (void)tid;
    const xattn_args *a = (const xattn_args *)p;
    int64_t req = 0;
    for (int64_t u = lo; u < hi; u++) {
        while (a->unit0[req + 1] <= u) req++;
        const int64_t nblk = (a->ext[req] + a->BQ - 1) / a->BQ, r = u - a->unit0[req];
        const int kvh = (int)(r / nblk);
        const int64_t blk = nblk - 1 - r % nblk;
        /* a unit of at most 16 rows (a prefill's last few positions) runs one row vector,
         * not XA_RV of padding */
        const int64_t npos = a->ext[req] - blk * a->BQ < a->BQ ? a->ext[req] - blk * a->BQ : a->BQ;
        const int one = npos * (a->Hq / a->Hkv) <= 16;
        switch (a->D * 4 + a->bf * 2 + one) {
        case 256: xattn_unit_d(a, req, kvh, blk, 64, 0, XA_RV); break;
        case 257: xattn_unit_d(a, req, kvh, blk, 64, 0, 1); break;
        case 512: xattn_unit_d(a, req, kvh, blk, 128, 0, XA_RV); break;
        case 513: xattn_unit_d(a, req, kvh, blk, 128, 0, 1); break;
#if BF16_DOT
        case 258: xattn_unit_d(a, req, kvh, blk, 64, 1, XA_RV); break;
        case 259: xattn_unit_d(a, req, kvh, blk, 64, 1, 1); break;
        case 514: xattn_unit_d(a, req, kvh, blk, 128, 1, XA_RV); break;
        case 515: xattn_unit_d(a, req, kvh, blk, 128, 1, 1); break;
#endif
        default: break;
        }
    }
}

/* The decode rows of the batch (``xattn_decode_row``; ``nd`` of them) by the decode step's
 * ``attention``: their q gathered as float32 rows (a bfloat16 q widened exactly), their
 * outputs written back in q's dtype (bfloat16 rounded to nearest even).
 * A row's bits depend on its own sequence alone, as in a decode step. Returns 0 or -1. */
static int xattn_decode_rows(const xattn_args *a, int nreq, int64_t nd, int nthreads) {
    const int Hq = a->Hq, Hkv = a->Hkv, D = a->D;
    const int64_t HD = (int64_t)Hq * D;
    int64_t max_seq = 1;
    for (int r = 0; r < nreq; r++)
        if (xattn_decode_row(a, r) && xattn_seq(a, r) > max_seq) max_seq = xattn_seq(a, r);
    int64_t score_floats;
    const size_t floats = (size_t)(2 * nd * HD + attn_scratch_floats((int)nd, Hq, Hkv, D, max_seq,
                                                                     nthreads, &score_floats));
    const size_t float_bytes = (floats * sizeof(float) + 63) & ~(size_t)63;
    const size_t bytes = float_bytes + sizeof(int64_t) * (size_t)(3 * nd + 1) +
                         sizeof(atomic_int) * (size_t)(nd * Hkv);
    float *buf = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!buf) return -1;
    float *qf = buf, *of = qf + nd * HD, *scores = of + nd * HD;
    float *part = scores + (int64_t)nthreads * score_floats;
    int64_t *rows = (int64_t *)((char *)buf + float_bytes), *seq = rows + nd, *unit0 = seq + nd;
    atomic_int *done = (atomic_int *)(unit0 + nd + 1);
    for (int r = 0, i = 0; r < nreq; r++) {
        if (!xattn_decode_row(a, r)) continue;
        rows[i] = a->rows[r];
        seq[i] = xattn_seq(a, r);
        if (a->bf) {
            const uint16_t *src = (const uint16_t *)a->q + a->tok0[r] * HD;
            for (int64_t e = 0; e < HD; e++) qf[i * HD + e] = bf16_to_f32(src[e]);
        } else {
            memcpy(qf + i * HD, (const float *)a->q + a->tok0[r] * HD, sizeof(float) * HD);
        }
        i++;
    }
    attn_unit0(unit0, seq, (int)nd, Hkv);
    attn_args at = {(int)nd, Hq, Hkv, D, a->bf ? DT_BF16 : DT_F32, qf, of, a->kc, a->vc,
                    a->table, a->stride, rows, seq, scores, score_floats, a->scale,
                    unit0, part, done, HD};
    attention(&at, nthreads);
    for (int r = 0, i = 0; r < nreq; r++) {
        if (!xattn_decode_row(a, r)) continue;
        if (a->bf) {
            uint16_t *dst = (uint16_t *)a->out + a->tok0[r] * HD;
            to_bf16(of + i * HD, dst, HD);
        } else {
            memcpy((float *)a->out + a->tok0[r] * HD, of + i * HD, sizeof(float) * HD);
        }
        i++;
    }
    free(buf);
    return 0;
}

#endif /* __AVX512F__ */

/* Causal attention of an extend forward's new tokens over the pool (see the top of this
 * file). q, out: [N, Hq, D], the requests' tokens in order; kc, vc: the layer's [slots, Hkv, D]
 * pool; all bfloat16 (``bf`` 1) or all float32 (0). table: req_to_token (``stride`` a row);
 * per request (nreq): its table row, prefix length and new tokens (> 0). Returns 0, -1 (out of
 * memory), or -2 where this build or the shape is not supported (no AVX-512, bfloat16 without
 * AVX512_BF16, head_dim other than 64 / 128, Hq not a multiple of Hkv, a position past 2^31),
 * the caller then attends another way; nothing is written unless 0. */
int plait_extend_attention(const void *q, const void *kc, const void *vc, int bf,
                           const int64_t *table, int64_t stride, const int64_t *rows,
                           const int64_t *prefix, const int64_t *ext, int nreq, int Hq, int Hkv,
                           int D, float scale, void *out, int nthreads) {
#if defined(__AVX512F__)
    if ((D != 64 && D != 128) || Hkv < 1 || Hq % Hkv || Hq / Hkv > XA_ROWS || nreq < 1)
        return -2;
    if (bf && !BF16_DOT) return -2;
    int64_t *meta = malloc(sizeof(int64_t) * (3 * (size_t)nreq + 2));
    if (!meta) return -1;
    int64_t *tok0 = meta, *unit0 = meta + nreq, *vpk0 = meta + 2 * (size_t)nreq + 1;
    const int BQ = xattn_bq(Hq / Hkv);
    int64_t t = 0, u = 0, packs = 0, decodes = 0;
    xattn_args a = {q, kc, vc, bf, table, stride, rows, prefix, ext, tok0, unit0, vpk0, NULL,
                    Hq, Hkv, D, BQ, scale, out};
    vpk0[0] = 0;
    for (int r = 0; r < nreq; r++) {
        if (ext[r] < 1 || prefix[r] < 0 || prefix[r] + ext[r] > INT32_MAX) {
            free(meta);
            return -2;
        }
        tok0[r] = t;
        unit0[r] = u;
        t += ext[r];
        const int dec = xattn_decode_row(&a, r);
        decodes += dec;
        u += dec ? 0 : (int64_t)Hkv * ((ext[r] + BQ - 1) / BQ);
        vpk0[r + 1] = vpk0[r] + (dec ? 0 : xattn_pairs(&a, r) * Hkv * D);
        packs += xattn_packs(&a, r);
    }
    unit0[nreq] = u;
    if (bf && packs) {
        a.vpk = malloc(sizeof(uint32_t) * (size_t)vpk0[nreq]);
        if (!a.vpk) {
            free(meta);
            return -1;
        }
    }
    nthreads = acquire_pool(nthreads);
    if (bf && packs) parallel_claim(xattn_pack_v, &a, packs, 1, nthreads);
    if (u) parallel_claim(xattn_units, &a, u, 1, nthreads);
    const int rc = decodes ? xattn_decode_rows(&a, nreq, decodes, nthreads) : 0;
    pthread_mutex_unlock(&pool.step_lock);
    free(a.vpk);
    free(meta);
    return rc;
#else
    (void)q, (void)kc, (void)vc, (void)bf, (void)table, (void)stride, (void)rows, (void)prefix;
    (void)ext, (void)nreq, (void)Hq, (void)Hkv, (void)D, (void)scale, (void)out, (void)nthreads;
    return -2;
#endif
}

/* 1 where ``plait_extend_attention`` is built for bfloat16 (``bf`` 1) or float32 (0), else 0. */
int plait_extend_attention_built(int bf) {
#if defined(__AVX512F__)
    return bf ? BF16_DOT : 1;
#else
    (void)bf;
    return 0;
#endif
}
