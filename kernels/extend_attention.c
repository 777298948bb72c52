/* Attention of a prefill (an extend forward) over the paged KV pool, bfloat16, by AVX512_BF16.
 *
 * Part of cpu_decode.c's build (included at its end: it runs on that file's thread pool and
 * uses its vector helpers). For each request r of the batch, its E new tokens at positions
 * P .. P + E - 1 (P: the prefix already in the pool) attend causally over the request's keys
 * 0 .. position, read through ``req_to_token`` as the decode step reads them: nothing is
 * gathered into a dense copy, and no mask is built. Grouped-query: the G query heads of a KV
 * head share every key and value they read.
 *
 * Flash attention's blocking: a unit is (request, KV head, block of BQ positions), its rows the
 * block's positions x the group's heads (at most XA_ROWS). The unit walks the keys in blocks
 * of XA_BK up to its last row's position; each key block is packed once (K as [D / 2 pairs]
 * [XA_BK keys] and V as [XA_BK / 2 key pairs][D], both 32-bit bfloat16 pairs) and serves all
 * the unit's rows, R at a time: the scores by ``vdpbf16ps`` with a query pair broadcast, an
 * online softmax in float32, and P V by ``vdpbf16ps`` with the weights rounded to bfloat16
 * (as torch's CPU flash attention rounds them for a bfloat16 input). A row's sums run over the
 * key blocks in order whatever thread runs its unit: the bits do not depend on the thread
 * count or on the other requests of the batch.
 */

#if BF16_DOT

#define XA_BK 32    /* keys a block */
#define XA_ROWS 96  /* rows (positions x the group's heads) a unit, at most */
#define XA_DMAX 128 /* largest head_dim built */

typedef struct {
    const uint16_t *q;          /* [N, Hq, D] */
    const uint16_t *kc, *vc;    /* the layer's pool, [slots, Hkv, D] */
    const int64_t *table;       /* req_to_token, rows ``stride`` apart */
    int64_t stride;
    const int64_t *rows;        /* per request: its table row */
    const int64_t *prefix, *ext; /* per request: tokens in the pool before, tokens new */
    const int64_t *tok0;        /* per request: its first token in q / out */
    const int64_t *unit0;       /* [R + 1]: each request's first unit */
    int Hq, Hkv, D, BQ;         /* BQ: positions a unit */
    float scale;
    uint16_t *out;              /* [N, Hq, D] */
} xattn_args;

/* Positions a unit: as many as fill XA_ROWS rows with the group's heads. */
INLINE int xattn_bq(int G) { return G >= XA_ROWS ? 1 : XA_ROWS / G; }

/* One key block packed for the unit's rows: kt[p][j] = (K_j[2p], K_j[2p + 1]) and
 * vp[jp][d] = (V_2jp[d], V_2jp+1[d]); keys past ``nk`` are zeros (their weights are 0, and a
 * zero times a pool's stale value could be a NaN). */
INLINE void xattn_pack(const xattn_args *a, const int64_t *slots, int kvh, int nk, uint32_t *kt,
                       uint32_t *vp, const int D) {
    const int64_t HD = (int64_t)a->Hkv * D;
    for (int j = 0; j < XA_BK; j++) {
        if (j < nk) {
            const uint32_t *k = (const uint32_t *)(a->kc + slots[j] * HD + (int64_t)kvh * D);
            for (int p = 0; p < D / 2; p++) kt[p * XA_BK + j] = k[p];
        } else {
            for (int p = 0; p < D / 2; p++) kt[p * XA_BK + j] = 0;
        }
    }
    for (int jp = 0; jp < XA_BK / 2; jp++) {
        const int j0 = 2 * jp, j1 = j0 + 1;
        const uint16_t *v0 = j0 < nk ? a->vc + slots[j0] * HD + (int64_t)kvh * D : NULL;
        const uint16_t *v1 = j1 < nk ? a->vc + slots[j1] * HD + (int64_t)kvh * D : NULL;
        uint32_t *dst = vp + jp * D;
        for (int d = 0; d < D; d++)
            dst[d] = (uint32_t)(v0 ? v0[d] : 0) | (uint32_t)(v1 ? v1[d] : 0) << 16;
    }
}

/* Rows rg .. rg + R - 1 of a unit against one packed key block (keys k0 ..): scores, the
 * online softmax's update of m, l and o, and o += P V. ``pos``: each row's position (keys
 * past it are masked), ``nk``: the block's real keys. */
INLINE void xattn_rows(const xattn_args *a, const uint32_t *qp, const int64_t *pos, int64_t k0,
                       int nk, const uint32_t *kt, const uint32_t *vp, float *m, float *l,
                       float *o, const int D, const int R) {
    __m512 s[R][2];
    for (int r = 0; r < R; r++) s[r][0] = s[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < D / 2; p++) {
        const __m512bh k0v = (__m512bh)_mm512_loadu_si512(kt + p * XA_BK);
        const __m512bh k1v = (__m512bh)_mm512_loadu_si512(kt + p * XA_BK + 16);
        for (int r = 0; r < R; r++) {
            const __m512bh qb = (__m512bh)_mm512_set1_epi32((int)qp[r * (D / 2) + p]);
            s[r][0] = _mm512_dpbf16_ps(s[r][0], qb, k0v);
            s[r][1] = _mm512_dpbf16_ps(s[r][1], qb, k1v);
        }
    }
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    uint32_t pb[R][XA_BK / 2]; /* each row's weights as bfloat16 pairs */
    float alpha[R];
    for (int r = 0; r < R; r++) {
        /* a key k0 + j is seen by a row at pos when k0 + j <= pos and j < nk */
        int64_t lim = pos[r] - k0 + 1;
        lim = lim < nk ? lim : nk;
        const __m512i lim_v = _mm512_set1_epi32((int)lim);
        const __mmask16 in0 = _mm512_cmplt_epi32_mask(lane, lim_v);
        const __mmask16 in1 = _mm512_cmplt_epi32_mask(_mm512_add_epi32(lane, _mm512_set1_epi32(16)), lim_v);
        const __m512 sc = _mm512_set1_ps(a->scale);
        const __m512 x0 = _mm512_mul_ps(s[r][0], sc), x1 = _mm512_mul_ps(s[r][1], sc);
        const __m512 ninf = _mm512_set1_ps(-INFINITY);
        const __m512 mx2 = _mm512_max_ps(_mm512_mask_mov_ps(ninf, in0, x0), _mm512_mask_mov_ps(ninf, in1, x1));
        const float bm = _mm512_reduce_max_ps(mx2);
        const float mnew = bm > m[r] ? bm : m[r];
        alpha[r] = m[r] == -INFINITY ? 0.0f : sexp(m[r] - mnew);
        const __m512 mv = _mm512_set1_ps(mnew);
        vfw e0, e1;
        __m512 d0 = _mm512_sub_ps(x0, mv), d1 = _mm512_sub_ps(x1, mv);
        memcpy(&e0, &d0, 64);
        memcpy(&e1, &d1, 64);
        e0 = vexp(e0);
        e1 = vexp(e1);
        __m512 p0, p1;
        memcpy(&p0, &e0, 64);
        memcpy(&p1, &e1, 64);
        p0 = _mm512_maskz_mov_ps(in0, p0);
        p1 = _mm512_maskz_mov_ps(in1, p1);
        l[r] = l[r] * alpha[r] + _mm512_reduce_add_ps(_mm512_add_ps(p0, p1));
        m[r] = mnew;
        /* cvtne2ps: the second operand's lanes become the low half (keys 0..15) */
        const __m512bh pbh = _mm512_cvtne2ps_pbh(p1, p0);
        _mm512_storeu_si512(pb[r], (__m512i)pbh);
    }
    for (int d = 0; d < D / 16; d++) {
        __m512 acc[R];
        for (int r = 0; r < R; r++)
            acc[r] = _mm512_mul_ps(_mm512_loadu_ps(o + r * D + 16 * d), _mm512_set1_ps(alpha[r]));
        for (int jp = 0; jp < XA_BK / 2; jp++) {
            const __m512bh v = (__m512bh)_mm512_loadu_si512(vp + jp * D + 16 * d);
            for (int r = 0; r < R; r++)
                acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_set1_epi32((int)pb[r][jp]), v);
        }
        for (int r = 0; r < R; r++) _mm512_storeu_ps(o + r * D + 16 * d, acc[r]);
    }
}

/* One unit: request ``req``, KV head ``kvh``, positions blk * BQ .. (of the request's new
 * tokens). Rows are position-major (row = i * G + g). */
INLINE void xattn_unit_d(const xattn_args *a, int64_t req, int kvh, int64_t blk, const int D,
                         const int R) {
    const int G = a->Hq / a->Hkv;
    const int64_t P = a->prefix[req], E = a->ext[req], i0 = blk * a->BQ;
    const int npos = (int)(E - i0 < a->BQ ? E - i0 : a->BQ);
    const int nrows = npos * G, padded = (nrows + R - 1) / R * R;
    uint32_t qp[XA_ROWS * XA_DMAX / 2] __attribute__((aligned(64)));
    float o[XA_ROWS * XA_DMAX] __attribute__((aligned(64)));
    float m[XA_ROWS], l[XA_ROWS];
    int64_t pos[XA_ROWS];
    uint32_t kt[XA_DMAX / 2 * XA_BK] __attribute__((aligned(64)));
    uint32_t vp[XA_BK / 2 * XA_DMAX] __attribute__((aligned(64)));
    for (int row = 0; row < padded; row++) {
        const int i = row < nrows ? row / G : npos - 1;
        pos[row] = P + i0 + i;
        m[row] = -INFINITY;
        l[row] = 0.0f;
        memset(o + row * D, 0, sizeof(float) * D);
        if (row < nrows) {
            const uint16_t *q = a->q + ((a->tok0[req] + i0 + i) * a->Hq + kvh * G + row % G) * D;
            memcpy(qp + row * (D / 2), q, sizeof(uint16_t) * D);
        } else {
            memset(qp + row * (D / 2), 0, sizeof(uint16_t) * D);
        }
    }
    const int64_t *slots = a->table + a->rows[req] * a->stride;
    const int64_t last = pos[nrows - 1];
    for (int64_t k0 = 0; k0 <= last; k0 += XA_BK) {
        const int nk = (int)(last + 1 - k0 < XA_BK ? last + 1 - k0 : XA_BK);
        xattn_pack(a, slots + k0, kvh, nk, kt, vp, D);
        for (int rg = 0; rg < padded; rg += R) {
            if (k0 > pos[rg + R - 1]) continue; /* every row of the group is before the block */
            xattn_rows(a, qp + rg * (D / 2), pos + rg, k0, nk, kt, vp, m + rg, l + rg,
                       o + rg * D, D, R);
        }
    }
    for (int row = 0; row < nrows; row++) {
        const int i = row / G;
        uint16_t *dst = a->out + ((a->tok0[req] + i0 + i) * a->Hq + kvh * G + row % G) * D;
        const __m512 inv = _mm512_set1_ps(1.0f / l[row]);
        for (int d = 0; d < D; d += 16) {
            const __m256bh y = _mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_loadu_ps(o + row * D + d), inv));
            _mm256_storeu_si256((__m256i *)(dst + d), (__m256i)y);
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
        if (a->D == 64)
            xattn_unit_d(a, req, kvh, blk, 64, 6);
        else
            xattn_unit_d(a, req, kvh, blk, 128, 3);
    }
}

#endif /* BF16_DOT */

/* Causal attention of an extend forward's new tokens over the pool (see the top of this
 * file). q, out: [N, Hq, D] bfloat16, the requests' tokens in order; kc, vc: the layer's
 * [slots, Hkv, D] bfloat16 pool; table: req_to_token (``stride`` a row); per request (nreq):
 * its table row, prefix length and new tokens (> 0). Returns 0, or -2 where this build or the
 * shape is not supported (no AVX512_BF16, head_dim other than 64 / 128, Hq not a multiple of
 * Hkv), the caller then attends another way. */
int plait_extend_attention(const uint16_t *q, const uint16_t *kc, const uint16_t *vc,
                           const int64_t *table, int64_t stride, const int64_t *rows,
                           const int64_t *prefix, const int64_t *ext, int nreq, int Hq, int Hkv,
                           int D, float scale, uint16_t *out, int nthreads) {
#if BF16_DOT
    if ((D != 64 && D != 128) || Hkv < 1 || Hq % Hkv || nreq < 1) return -2;
    const int G = Hq / Hkv;
    if (G > XA_ROWS) return -2;
    int64_t *meta = malloc(sizeof(int64_t) * (2 * (size_t)nreq + 1));
    if (!meta) return -1;
    int64_t *tok0 = meta, *unit0 = meta + nreq;
    const int BQ = xattn_bq(G);
    int64_t t = 0, u = 0;
    for (int r = 0; r < nreq; r++) {
        if (ext[r] < 1) {
            free(meta);
            return -2;
        }
        tok0[r] = t;
        unit0[r] = u;
        t += ext[r];
        u += (int64_t)Hkv * ((ext[r] + BQ - 1) / BQ);
    }
    unit0[nreq] = u;
    xattn_args a = {q, kc, vc, table, stride, rows, prefix, ext, tok0, unit0,
                    Hq, Hkv, D, BQ, scale, out};
    nthreads = acquire_pool(nthreads);
    parallel_claim(xattn_units, &a, u, 1, nthreads);
    pthread_mutex_unlock(&pool.step_lock);
    free(meta);
    return 0;
#else
    (void)q, (void)kc, (void)vc, (void)table, (void)stride, (void)rows, (void)prefix, (void)ext;
    (void)nreq, (void)Hq, (void)Hkv, (void)D, (void)scale, (void)out, (void)nthreads;
    return -2;
#endif
}
