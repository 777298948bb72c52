/* One decode step of a Llama-family model on the CPU, in one call: the "static decode graph"
 * of plait's CPU path (kernels/cpu_decode.py builds and loads this file; runtime/model/
 * fused_decode.py lays out its arguments).
 *
 * A decode step of a small model is latency-bound: in torch it is ~1,500 small ops, each with
 * its dispatch and thread-pool wake-up, around 121 matrix-vector products. Here the whole step
 * (embedding, per layer: RMSNorm, fused q/k/v product, RoPE, KV write into the paged pool,
 * attention over the pool's slots, output product + residual, RMSNorm, gate/up product, SiLU,
 * down product + residual; the final norm and the LM head) runs in C on a small pool of
 * threads with one dispatch per phase.
 *
 * Invariants:
 *  - Activations are float32 throughout (rounded to bfloat16 inside bfloat16 products, to
 *    int16 per 32-element block inside int8 / int4 ones by VNNI); weights are float32 or
 *    bfloat16, or int8 / int4 per 32-element block (see DT_I8, DT_I4, DT_I8P) with float32
 *    scales;
 *    KV is written in the pool's dtype (bfloat16 rounded to nearest even, as torch does).
 *  - Every output element is computed by exactly one thread, with a summation order that does
 *    not depend on the thread count: the results are the same bits at any thread count.
 *    (Attention splits a row's positions into chunks fixed by the row's length alone, merged
 *    in chunk order: the same bits at any thread count and in any batch.)
 *  - Weights are [out, in], row-major (``Linear`` with ``transposed`` False).
 *  - Not reentrant across threads: the pool runs one step at a time (a mutex serialises
 *    callers, e.g. two engines in one process).
 *  - A phase's work is claimed in chunks, not split in fixed halves (``parallel_claim``): a
 *    thread slowed by the machine does not hold the others at the phase's end, and one that
 *    has not come yet (descheduled, waking up) is not waited for; it joins a later phase.
 *  - After a step returns, its workers may still be prefetching (only reading) the next
 *    step's first weights; they stop at the pool's next job, which does not wait for them.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

typedef float f32x16 __attribute__((vector_size(64)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x4 __attribute__((vector_size(16)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint8_t u8x16 __attribute__((vector_size(16)));

/* The widest float vector the CPU holds in a register (VW lanes): a product's 16 lanes are VPARTS
 * of them. Without AVX-512 a 64-byte vector has no machine mode, so gcc keeps every f32x16
 * variable in memory (each operation a store and reloads): the products' loops hold their
 * 16 lanes as two 8-lane halves instead, the same arithmetic lane by lane. */
#if defined(__AVX512F__)
#define VW 16
#else
#define VW 8
#endif
#define VPARTS (16 / VW)
/* The batch tiles' weight rows x activation rows: each output holds VPARTS accumulators, so
 * a tile keeps TILE_RO x TILE_NB x VPARTS of them live, plus TILE_RO weights and one
 * activation. 4 x 4 fills 21 of AVX-512's 32 registers. AVX2 has 16: 4 x 4 there spilled the
 * accumulators to the stack (one forward's products at 32-64 rows, 2 threads of a Zen 3:
 * bfloat16 63 GFLOP/s, float32 75-77); 3 x 2 fills all 16 (bfloat16 98-101, float32 97-105;
 * 2 x 3: 98-104 and 80-90; 4 x 1: 68-71 and 100-111). */
#if VW == 16
#define TILE_RO 4
#define TILE_NB 4
#else
#define TILE_RO 3
#define TILE_NB 2
#endif
typedef float vfw __attribute__((vector_size(4 * VW)));
typedef int32_t i32xw __attribute__((vector_size(4 * VW)));
typedef uint32_t u32xw __attribute__((vector_size(4 * VW)));
typedef uint16_t u16xw __attribute__((vector_size(2 * VW)));
typedef uint8_t u8xw __attribute__((vector_size(VW)));

#define INLINE static inline __attribute__((always_inline))
/* Holds a loaded vector in a register: without it gcc folds the load into each FMA that uses
 * it, so a 4 x 4 tile loads 32 vectors per 16 FMAs instead of 8. With AVX2 too: float32
 * products of 4-32 rows from cache 1.13-1.19x on one thread (bfloat16 1.02-1.04x), served
 * float32 batches of distinct prompts 1.11x (bench/RESULTS.md). */
#if defined(__x86_64__) && defined(__AVX512F__)
#define KEEP(v) __asm__("" : "+v"(v))
#elif defined(__x86_64__) && defined(__AVX2__)
#define KEEP(v) __asm__("" : "+x"(v))
#else
#define KEEP(v) ((void)0)
#endif

INLINE f32x16 splat(float a) { return (f32x16){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
INLINE f32x16 load_f32(const float *p) { f32x16 v; memcpy(&v, p, 64); return v; }
INLINE void store_f32(float *p, f32x16 v) { memcpy(p, &v, 64); }
INLINE f32x16 load_bf16(const uint16_t *p) {
#if defined(__AVX512F__) /* one widening load (gcc splits the generic one in two halves) */
    __m512i w = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const void *)p)), 16);
    f32x16 f;
    memcpy(&f, &w, 64);
    return f;
#else
    u16x16 h;
    memcpy(&h, p, 32);
    u32x16 w = __builtin_convertvector(h, u32x16) << 16;
    f32x16 f;
    memcpy(&f, &w, 64);
    return f;
#endif
}
/* VW bfloat16 values widened to float32 */
INLINE vfw load_bf16_vw(const uint16_t *p) {
#if VW == 16
    return load_bf16(p);
#elif defined(__AVX2__) /* one widening load */
    __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const void *)p)), 16);
    vfw f;
    memcpy(&f, &w, 32);
    return f;
#else
    u16xw h;
    memcpy(&h, p, sizeof h);
    u32xw w = __builtin_convertvector(h, u32xw) << 16;
    vfw f;
    memcpy(&f, &w, sizeof f);
    return f;
#endif
}
/* Bytes to floats by zero extension (widen, then convert: gcc 12 scalarises a direct
 * conversion, and any sign extension of bytes). */
INLINE f32x16 u8_to_f32(u8x16 v) {
    return __builtin_convertvector(__builtin_convertvector(v, i32x16), f32x16);
}
INLINE float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
INLINE uint16_t f32_to_bf16(float f) { /* round to nearest even, NaN kept quiet (as c10) */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}
/* The sum of 16 lanes by halving (lane i + 8, then + 4, + 2, + 1) in registers: a fixed
 * order, and no round trip through memory (which made it the cost of a short row). */
INLINE float hsum8(f32x8 a) { /* hsum's steps after the first halving */
    f32x4 b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
    return (b[0] + b[2]) + (b[1] + b[3]);
}
INLINE float hsum(f32x16 v) {
    return hsum8(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
                 __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
}
/* ``hsum`` of 16 lanes held as VPARTS parts of VW lanes: the same additions in the same order
 * (the first halving, lane i + lane i + 8, is the two halves' sum). */
INLINE float hsum_parts(const vfw *v) {
#if VW == 16
    return hsum(v[0]);
#else
    return hsum8(v[0] + v[1]);
#endif
}
/* 16 sums at once, each in exactly ``hsum``'s order (so the same bits): lane 4k + i holds
 * hsum(v[4i + k]). 15 shuffle pairs and adds against 16 x 7 for ``hsum`` one by one: the
 * epilogue of a 4 x 4 tile was a quarter of a bfloat16 product over 576 inputs. */
INLINE f32x16 hsum16(const f32x16 *v) {
    f32x16 z[8], w[4], t[2];
    for (int p = 0; p < 8; p++) /* lane i + lane i + 8 */
        z[p] = __builtin_shufflevector(v[2 * p], v[2 * p + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18,
                                       19, 20, 21, 22, 23) +
               __builtin_shufflevector(v[2 * p], v[2 * p + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24,
                                       25, 26, 27, 28, 29, 30, 31);
    for (int q = 0; q < 4; q++) /* + 4 */
        w[q] = __builtin_shufflevector(z[2 * q], z[2 * q + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17,
                                       18, 19, 24, 25, 26, 27) +
               __builtin_shufflevector(z[2 * q], z[2 * q + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21,
                                       22, 23, 28, 29, 30, 31);
    for (int r = 0; r < 2; r++) /* + 2 */
        t[r] = __builtin_shufflevector(w[2 * r], w[2 * r + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9,
                                       24, 25, 12, 13, 28, 29) +
               __builtin_shufflevector(w[2 * r], w[2 * r + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11,
                                       26, 27, 14, 15, 30, 31);
    return __builtin_shufflevector(t[0], t[1], 0, 2, 16, 18, 4, 6, 20, 22, 8, 10, 24, 26, 12, 14,
                                   28, 30) + /* + 1 */
           __builtin_shufflevector(t[0], t[1], 1, 3, 17, 19, 5, 7, 21, 23, 9, 11, 25, 27, 13, 15,
                                   29, 31);
}
/* 8 sums at once, each in exactly ``hsum8``'s order (so the same bits): lane j holds
 * hsum8(a[j]). 7 shuffle pairs and adds against 8 x 5 for ``hsum8`` one by one. */
INLINE f32x8 hsum8x8(const f32x8 *a) {
    f32x8 p[4], q[2];
    for (int i = 0; i < 4; i++) /* b = lo4 + hi4: [b of a[2i] | b of a[2i + 1]] */
        p[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
               __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
    for (int i = 0; i < 2; i++) /* (b0 + b2, b1 + b3) of keys 4i, 4i + 2, 4i + 1, 4i + 3 */
        q[i] = __builtin_shufflevector(p[2 * i], p[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
               __builtin_shufflevector(p[2 * i], p[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
    const f32x8 r = /* (b0 + b2) + (b1 + b3) of keys 0, 2, 4, 6, 1, 3, 5, 7 */
        __builtin_shufflevector(q[0], q[1], 0, 2, 8, 10, 4, 6, 12, 14) +
        __builtin_shufflevector(q[0], q[1], 1, 3, 9, 11, 5, 7, 13, 15);
    return __builtin_shufflevector(r, r, 0, 4, 1, 5, 2, 6, 3, 7);
}
INLINE vfw vsplat(float a) { return (vfw){0} + a; }
INLINE vfw load_vw(const float *p) {
    vfw v;
    memcpy(&v, p, sizeof v);
    return v;
}
INLINE void store_vw(float *p, vfw v) { memcpy(p, &v, sizeof v); }
INLINE vfw vselect(i32xw mask, vfw a, vfw b) {
    i32xw ai, bi;
    memcpy(&ai, &a, sizeof ai);
    memcpy(&bi, &b, sizeof bi);
    i32xw r = (mask & ai) | (~mask & bi);
    vfw f;
    memcpy(&f, &r, sizeof f);
    return f;
}
/* exp(x) for float32: Cephes' expf polynomial with the exponent added to the bits; relative
 * error ~2 ulp, exp(x) = 0 below -87.3 (softmax's weights there are below float32's range). */
INLINE vfw vexp(vfw x) {
    const vfw hi = vsplat(88.3762626647949f), lo = vsplat(-87.3365478515625f);
    i32xw under = x < lo;
    x = vselect(x > hi, hi, x);
    x = vselect(under, lo, x);
    const vfw magic = vsplat(12582912.0f); /* 1.5 * 2^23: adds round to an integer */
    vfw t = x * vsplat(1.44269504088896341f) + magic;
    vfw n = t - magic;
    vfw r = x - n * vsplat(0.693359375f);
    r = r - n * vsplat(-2.12194440e-4f);
    vfw p = vsplat(1.9875691500e-4f);
    p = p * r + vsplat(1.3981999507e-3f);
    p = p * r + vsplat(8.3334519073e-3f);
    p = p * r + vsplat(4.1665795894e-2f);
    p = p * r + vsplat(1.6666665459e-1f);
    p = p * r + vsplat(5.0000001201e-1f);
    p = p * (r * r) + r + vsplat(1.0f);
    i32xw ni = __builtin_convertvector(n, i32xw);
    i32xw pi;
    memcpy(&pi, &p, sizeof pi);
    pi += ni << 23;
    memcpy(&p, &pi, sizeof p);
    return vselect(under, vsplat(0.0f), p);
}
INLINE float sexp(float x) {
    vfw v = vexp(vsplat(x));
    return v[0];
}

/* ---- the thread pool ------------------------------------------------------------------- */

#define MAX_THREADS 64
/* How long an idle worker spins before it sleeps: a phase's next job comes in microseconds, a
 * step's next one after the caller's Python (~0.5 ms), while on a 2-core box the HTTP server
 * and its client wait for a core. Counted in pause loops, calibrated once: a pause is ~25 ns
 * on a Zen 3 and ~40 on a Skylake, so a fixed 20,000 loops spun ~0.5 ms there, not the 0.1
 * meant (served bfloat16 single streams at 0.1 ms against 0.5: 1.10x, 1.05x, 1.06x by
 * median in three alternating runs; int4 1.04x and 0.98x). */
#define SPIN_NS 100000
static int spin_rounds = 20000; /* until calibrate_spin, which runs before any worker */

/* The fastest of three timings of 2,000 pauses (one descheduled in the middle counts long). */
static void calibrate_spin(void) {
    double ns = 0;
    for (int rep = 0; rep < 3; rep++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < 2000; i++) CPU_RELAX();
        clock_gettime(CLOCK_MONOTONIC, &b);
        const double t = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
        if (rep == 0 || t < ns) ns = t;
    }
    if (ns <= 0) return;
    const double rounds = SPIN_NS * 2000.0 / ns;
    spin_rounds = rounds < 100 ? 100 : rounds > 1000000 ? 1000000 : (int)rounds;
}

typedef void (*task_fn)(void *arg, int tid, int nth);
typedef void (*range_fn)(void *arg, int tid, int64_t lo, int64_t hi);

/* What the workers are given, by whether and how the caller waits for it:
 *  - JOB_TASK: fn(arg, tid, nth) on every tid < nth, each once; the caller waits until every
 *    worker has counted itself done (``pending``), so no worker can miss one;
 *  - JOB_CLAIM: [0, units) in ranges of ``chunk`` by claiming (``parallel_claim``); the caller
 *    waits until every unit is done (``claim_done``), not for every worker: a worker
 *    descheduled before it claimed anything (for the HTTP server or its client on a 2-core box,
 *    or still waking up) no longer holds the phase while the caller spins, and joins whichever
 *    job is current when it runs;
 *  - JOB_AHEAD: fn(arg, tid, nth) that nobody waits for, which returns once ``pool.gen`` moves
 *    on (``job_current``). */
enum { JOB_TASK, JOB_CLAIM, JOB_AHEAD };

/* A job's fields, as one worker copied them (``read_job``). */
typedef struct {
    int kind, nth;
    task_fn fn;
    range_fn range;
    void *arg;
    int64_t units, chunk;
} job_view;

static struct {
    pthread_mutex_t step_lock; /* one step at a time: only its holder posts */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pid_t pid; /* the process the workers belong to (a fork starts none) */
    int workers;
    /* The job's sequence: odd while the poster writes the job's fields, even once they are
     * published (+2 a job). A worker reads the fields between two equal even reads of it. */
    atomic_ulong gen;
    atomic_int pending;
    atomic_int sleepers;
    _Atomic(task_fn) fn;
    _Atomic(range_fn) range;
    _Atomic(void *) arg;
    atomic_int kind, nth;
    atomic_llong units, chunk;
} pool = {.step_lock = PTHREAD_MUTEX_INITIALIZER, .mu = PTHREAD_MUTEX_INITIALIZER,
          .cv = PTHREAD_COND_INITIALIZER};

static unsigned long start_gen[MAX_THREADS]; /* pool.gen when each worker was made */
static _Thread_local unsigned long job_gen;  /* the gen of the job this thread runs */

/* Whether the job this thread runs is still the pool's (JOB_AHEAD's stop test). */
INLINE int job_current(void) {
    return atomic_load_explicit(&pool.gen, memory_order_relaxed) == job_gen;
}

/* The pool's latest published job, copied whole; returns its gen (even). */
static unsigned long read_job(job_view *j) {
    for (;;) {
        const unsigned long g = atomic_load_explicit(&pool.gen, memory_order_acquire);
        if (g & 1) { /* being written */
            CPU_RELAX();
            continue;
        }
        j->kind = atomic_load_explicit(&pool.kind, memory_order_relaxed);
        j->nth = atomic_load_explicit(&pool.nth, memory_order_relaxed);
        j->fn = atomic_load_explicit(&pool.fn, memory_order_relaxed);
        j->range = atomic_load_explicit(&pool.range, memory_order_relaxed);
        j->arg = atomic_load_explicit(&pool.arg, memory_order_relaxed);
        j->units = atomic_load_explicit(&pool.units, memory_order_relaxed);
        j->chunk = atomic_load_explicit(&pool.chunk, memory_order_relaxed);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&pool.gen, memory_order_relaxed) == g) return g;
    }
}

static int64_t claim_run(const job_view *j, unsigned long gen, int tid);

static void *worker_main(void *p) {
    int tid = (int)(intptr_t)p;
    unsigned long seen = start_gen[tid]; /* not a fresh read: a job may be posted already */
    for (;;) {
        int spins = 0;
        while (atomic_load_explicit(&pool.gen, memory_order_acquire) == seen) {
            if (++spins < spin_rounds) {
                CPU_RELAX();
                continue;
            }
            pthread_mutex_lock(&pool.mu);
            atomic_fetch_add(&pool.sleepers, 1);
            while (atomic_load(&pool.gen) == seen) pthread_cond_wait(&pool.cv, &pool.mu);
            atomic_fetch_sub(&pool.sleepers, 1);
            pthread_mutex_unlock(&pool.mu);
        }
        job_view j;
        seen = job_gen = read_job(&j); /* the latest: one a late worker missed is done */
        if (tid < j.nth) {
            if (j.kind == JOB_CLAIM) claim_run(&j, seen, tid);
            else j.fn(j.arg, tid, j.nth);
        }
        if (j.kind == JOB_TASK) atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
    return NULL;
}

/* fork: the parent's step finishes first (prepare takes the step lock); the child has no
 * workers, and its locks start free whatever a worker held at the fork. */
static void fork_prepare(void) { pthread_mutex_lock(&pool.step_lock); }
static void fork_parent(void) { pthread_mutex_unlock(&pool.step_lock); }
static void fork_child(void) {
    pthread_mutex_init(&pool.step_lock, NULL);
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pool.workers = 0;
    pool.pid = getpid();
    atomic_store(&pool.sleepers, 0);
    atomic_store(&pool.pending, 0);
}
/* Once a process, before its first worker. */
static void init_pool(void) {
    calibrate_spin();
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static int ensure_workers(int n) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_pool);
    pid_t pid = getpid();
    if (pool.pid != pid) { /* first use */
        pool.pid = pid;
        pool.workers = 0;
    }
    while (pool.workers < n) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_gen[pool.workers + 1] = atomic_load(&pool.gen);
        int rc = pthread_create(&t, &attr, worker_main, (void *)(intptr_t)(pool.workers + 1));
        pthread_attr_destroy(&attr);
        if (rc != 0) return -1;
        char name[16]; /* what top, perf and /proc/PID/task/TID/comm show */
        snprintf(name, sizeof name, "plait-pool-%d", (pool.workers + 1) & 0xff);
        pthread_setname_np(t, name);
        pool.workers++;
    }
    return 0;
}

/* Takes the pool for one call (released by the caller's pthread_mutex_unlock(&pool.step_lock))
 * and returns the thread count it can run: ``nthreads`` clamped to [1, MAX_THREADS], fewer if
 * a worker could not be started. */
static int acquire_pool(int nthreads) {
    nthreads = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    pthread_mutex_lock(&pool.step_lock);
    if (ensure_workers(nthreads - 1) != 0) nthreads = pool.workers + 1;
    return nthreads;
}

/* Starts writing a job: the gen goes odd (workers that look now wait for the end); returns
 * the gen the job will have. The caller holds the step lock and no JOB_TASK is pending. */
static unsigned long post_begin(void) {
    const unsigned long g = atomic_load_explicit(&pool.gen, memory_order_relaxed);
    atomic_store_explicit(&pool.gen, g + 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_release);
    return g + 2;
}

/* Publishes the job written since ``post_begin`` (everything written before this call is seen
 * by a worker that reads the gen) and wakes sleeping workers. */
static void post_end(unsigned long gen) {
    atomic_store_explicit(&pool.gen, gen, memory_order_seq_cst);
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.mu);
        pthread_cond_broadcast(&pool.cv);
        pthread_mutex_unlock(&pool.mu);
    }
}

static void post_fields(int kind, task_fn fn, range_fn range, void *arg, int nth,
                        int64_t units, int64_t chunk) {
    atomic_store_explicit(&pool.kind, kind, memory_order_relaxed);
    atomic_store_explicit(&pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&pool.range, range, memory_order_relaxed);
    atomic_store_explicit(&pool.arg, arg, memory_order_relaxed);
    atomic_store_explicit(&pool.nth, nth, memory_order_relaxed);
    atomic_store_explicit(&pool.units, units, memory_order_relaxed);
    atomic_store_explicit(&pool.chunk, chunk, memory_order_relaxed);
}

/* Runs fn(arg, tid, nth) for tid in [0, nth): tid 0 on the caller's thread, each other tid on
 * one worker, and returns once all have. */
static void parallel(task_fn fn, void *arg, int nth) {
    if (nth <= 1 || pool.workers == 0) {
        fn(arg, 0, 1);
        return;
    }
    const unsigned long g = post_begin();
    post_fields(JOB_TASK, fn, NULL, arg, nth, 0, 0);
    atomic_store_explicit(&pool.pending, pool.workers, memory_order_relaxed);
    post_end(g);
    job_gen = g;
    fn(arg, 0, nth);
    while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) CPU_RELAX();
}

/* Starts fn(arg, tid, nth) on workers 1 .. nth - 1 and returns without waiting: for work
 * whose end nobody waits on, which returns soon after the pool's next job is posted
 * (``job_current`` false). ``arg`` must outlive the call. */
static void post_ahead(task_fn fn, void *arg, int nth) {
    if (nth > pool.workers + 1) nth = pool.workers + 1;
    if (nth <= 1) return;
    const unsigned long g = post_begin();
    post_fields(JOB_AHEAD, fn, NULL, arg, nth, 0, 0);
    post_end(g);
}

INLINE void split(int64_t n, int64_t align, int tid, int nth, int64_t *lo, int64_t *hi) {
    int64_t units = (n + align - 1) / align;
    int64_t a = units * tid / nth, b = units * (tid + 1) / nth;
    *lo = a * align < n ? a * align : n;
    *hi = b * align < n ? b * align : n;
}

/* ---- work by claiming ---------------------------------------------------------------------- */

/* A phase's units split by claiming rather than by a fixed share: each thread claims the units
 * of its own share (``split``'s, in order: one stream for the prefetcher) one chunk at a time,
 * then claims the unclaimed chunks left in the other threads' shares. A thread that runs
 * slower (descheduled for the HTTP server or the client on a 2-core box, or given less of the
 * memory bus) no longer holds the phase while the others wait at its end: they finish its
 * share. And one that never came (JOB_CLAIM) is not waited for at all. Every unit is still
 * computed whole by the one thread that claimed it, in the same order, so which thread claims
 * what never changes a bit.
 *
 * A share is one word: the job's tag (its gen / 2, 32 bits) above the share's next unclaimed
 * unit. A claim is a compare-and-swap that holds only while the tag is its own job's, so a late
 * worker still holding an old job's view claims nothing from a later job's shares. */
typedef struct {
    _Alignas(64) atomic_ullong word;
} share_t;
static share_t shares[MAX_THREADS];
/* The units each thread computed in the current JOB_CLAIM, stored once at the end of its part
 * (a counter shared by the threads, added to a chunk at a time, cost bfloat16's ~3,800 claims
 * a step a cache line moved between the cores each: its C step 7.4 -> 7.9 ms). */
typedef struct {
    _Alignas(64) atomic_llong units;
} done_t;
static done_t claim_done[MAX_THREADS];

#define SHARE_TAG(gen) ((unsigned long long)(uint32_t)((gen) >> 1) << 32)

/* The parts of a decode step (``plait_phase_times``, ``plait_claim_trace``). */
enum {
    PH_NORM, PH_QKV, PH_ROPE_KV, PH_ATTENTION, PH_O, PH_GATE_UP, PH_SILU, PH_DOWN, PH_HEAD,
    PH_COUNT
};

#if defined(PLAIT_PHASE_TIMES) || defined(PLAIT_CLAIM_TRACE)
INLINE double phase_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
#endif

/* Each claimed phase's timeline, added up by part until ``plait_claim_trace`` reads and clears
 * it (bench/bench_claim_trace.py; a default build has none of it): from the job's post to its
 * end, the caller's own claiming, the caller's wait for the others' last units, and for each
 * worker that computed a unit its start after the post and its time claiming. Slot PH_* is the
 * part the step labels (``CLAIM_LABEL``), TRACE_FIRST a step's first claimed phase (where a
 * worker asleep since the last step joins late), TRACE_OTHER claims outside a step. */
enum { TRACE_FIRST = PH_COUNT, TRACE_OTHER, TRACE_SLOTS };
#ifdef PLAIT_CLAIM_TRACE
typedef struct {
    _Alignas(64) _Atomic double start, end;
    atomic_ulong gen;
} claim_mark_t;
static claim_mark_t claim_marks[MAX_THREADS];
typedef struct {
    double phases, total, own, wait, start, busy, joined;
} claim_sums_t;
static claim_sums_t claim_sums[TRACE_SLOTS];
static int claim_label = TRACE_OTHER, claim_first;
#define CLAIM_LABEL(p) (claim_label = (p))
#define CLAIM_STEP(on) (claim_first = (on), claim_label = TRACE_OTHER)
INLINE void claim_mark(int tid, unsigned long gen, int end) {
    if (end) {
        atomic_store_explicit(&claim_marks[tid].end, phase_now(), memory_order_relaxed);
        return;
    }
    atomic_store_explicit(&claim_marks[tid].gen, gen, memory_order_relaxed);
    atomic_store_explicit(&claim_marks[tid].start, phase_now(), memory_order_relaxed);
}
/* The caller, once every unit of job ``gen`` (posted at ``posted``) is done. A worker that
 * computed units stored its marks before its done count (release), read here after it. */
static void claim_traced(unsigned long gen, double posted, int nth) {
    const double now = phase_now();
    const int slot = claim_first ? TRACE_FIRST : claim_label;
    claim_first = 0;
    claim_sums_t *c = &claim_sums[slot];
    const double own0 = atomic_load_explicit(&claim_marks[0].start, memory_order_relaxed),
                 own1 = atomic_load_explicit(&claim_marks[0].end, memory_order_relaxed);
    c->phases += 1;
    c->total += now - posted;
    c->own += own1 - own0;
    c->wait += now - own1;
    for (int t = 1; t < nth; t++) {
        if (atomic_load_explicit(&claim_done[t].units, memory_order_acquire) <= 0 ||
            atomic_load_explicit(&claim_marks[t].gen, memory_order_relaxed) != gen)
            continue;
        const double t0 = atomic_load_explicit(&claim_marks[t].start, memory_order_relaxed),
                     t1 = atomic_load_explicit(&claim_marks[t].end, memory_order_relaxed);
        c->start += t0 - posted;
        c->busy += t1 - t0;
        c->joined += 1;
    }
}
void plait_claim_trace(double *out) {
    for (int s = 0; s < TRACE_SLOTS; s++) {
        const claim_sums_t *c = &claim_sums[s];
        const double v[7] = {c->phases, c->total, c->own, c->wait, c->start, c->busy, c->joined};
        memcpy(out + 7 * s, v, sizeof v);
    }
    memset(claim_sums, 0, sizeof claim_sums);
}
#else
#define CLAIM_LABEL(p) ((void)0)
#define CLAIM_STEP(on) ((void)0)
#define claim_mark(tid, gen, end) ((void)0)
#endif

/* Claims up to ``chunk`` units of share ``s`` below ``end``; returns how many (0: the share is
 * done), or -1 where the share is another job's (this thread's job is over). */
INLINE int64_t claim(share_t *s, unsigned long long tag, int64_t end, int64_t chunk,
                     int64_t *lo) {
    unsigned long long w = atomic_load_explicit(&s->word, memory_order_relaxed);
    for (;;) {
        if ((w & ~0xffffffffull) != tag) return -1;
        const int64_t next = (int64_t)(w & 0xffffffffull);
        if (next >= end) return 0;
        const int64_t n = end - next < chunk ? end - next : chunk;
        if (atomic_compare_exchange_weak_explicit(&s->word, &w, w + (unsigned long long)n,
                                                  memory_order_relaxed, memory_order_relaxed)) {
            *lo = next;
            return n;
        }
    }
}

/* Share t of ``units`` in ``chunk``s over ``nth`` threads: the chunks ``split`` gives thread t,
 * [lo, hi) in units. */
INLINE void share_bounds(int64_t units, int64_t chunk, int t, int nth, int64_t *lo,
                         int64_t *hi) {
    int64_t c0, c1;
    split((units + chunk - 1) / chunk, 1, t, nth, &c0, &c1);
    *lo = c0 * chunk;
    *hi = c1 * chunk < units ? c1 * chunk : units;
}

/* One thread's part of a JOB_CLAIM: its own share first, then the next threads'; returns the
 * units it computed. A worker stores them in its ``claim_done`` (where it computed any: one
 * that did is waited for, so its store lands before the next job resets the count). */
static int64_t claim_run(const job_view *j, unsigned long gen, int tid) {
    const unsigned long long tag = SHARE_TAG(gen);
    int64_t done = 0;
    claim_mark(tid, gen, 0);
    for (int k = 0; k < j->nth; k++) {
        const int t = (tid + k) % j->nth;
        int64_t start, end, lo, n;
        share_bounds(j->units, j->chunk, t, j->nth, &start, &end);
        while ((n = claim(&shares[t], tag, end, j->chunk, &lo)) > 0) {
            j->range(j->arg, tid, lo, lo + n);
            done += n;
        }
        if (n < 0) break;
    }
    claim_mark(tid, gen, 1);
    if (tid > 0 && done > 0)
        atomic_store_explicit(&claim_done[tid].units, done, memory_order_release);
    return done;
}

/* Runs fn(arg, tid, lo, hi) over [0, units) in ranges of at most ``chunk`` units, on ``nth``
 * threads by claiming, and returns once every unit is done. Each range starts at a multiple of
 * ``chunk``, whatever ``nth``: a kernel's tiles fall on the same rows at any thread count. */
static void parallel_claim(range_fn fn, void *arg, int64_t units, int64_t chunk, int nth) {
    if (nth > pool.workers + 1) nth = pool.workers + 1;
    if (nth < 1) nth = 1;
    job_view j = {JOB_CLAIM, nth, NULL, fn, arg, units, chunk};
    if (nth == 1 || units > INT32_MAX) { /* (a share's next unit is 32 bits) */
        for (int64_t lo = 0; lo < units; lo += chunk)
            fn(arg, 0, lo, lo + chunk < units ? lo + chunk : units);
        return;
    }
    const unsigned long g = post_begin();
    post_fields(JOB_CLAIM, NULL, fn, arg, nth, units, chunk);
    for (int t = 0; t < nth; t++) {
        int64_t lo, hi;
        share_bounds(units, chunk, t, nth, &lo, &hi);
        atomic_store_explicit(&shares[t].word, SHARE_TAG(g) | (unsigned long long)lo,
                              memory_order_relaxed);
    }
    for (int t = 1; t < nth; t++) atomic_store_explicit(&claim_done[t].units, 0, memory_order_relaxed);
#ifdef PLAIT_CLAIM_TRACE
    const double posted = phase_now();
#endif
    post_end(g); /* publishes the shares with the job */
    job_gen = g;
    const int64_t mine = claim_run(&j, g, 0);
    for (;;) {
        int64_t done = mine;
        for (int t = 1; t < nth; t++)
            done += atomic_load_explicit(&claim_done[t].units, memory_order_acquire);
        if (done >= units) break;
        CPU_RELAX();
    }
#ifdef PLAIT_CLAIM_TRACE
    claim_traced(g, posted, nth);
#endif
}

/* ---- products ---------------------------------------------------------------------------- */

/* Weight formats. DT_I8: int8 [out, in] with a float32 scale per 32-element block of a row
 * ([out, in / 32], GGUF's Q8_0; in a multiple of 32); the weight multiplied is q * scale in
 * float32 rounded to bfloat16 (nearest even), the values ``Int8Linear.dense`` holds (DT_I8P,
 * by VNNI, multiplies q and scale exactly). DT_I4: per 32-element
 * group g of a row, W = scale[g] * code + low[g] with code in 0..15, packed two to a byte in
 * 16 bytes per group (byte j: element j in the low nibble, element 16 + j in the high one, the
 * layout of GGUF's Q4_0 / Q4_1) and float32 [out, in / 32] scales and lows. DT_BF16T:
 * DT_BF16 laid out for AMX (``amx_bf16_rows``; made only where AMX is granted, ``in`` a
 * multiple of 32): each whole 16-row block's [in / 32][16][32], a tile of 1 KiB contiguous,
 * the rows past the last whole block after them as they are; every block where DT_BF16 has it.
 * ``product`` reads it as DT_BF16 with ``tiled`` set. */
enum {
    DT_F32 = 0, DT_BF16 = 1, DT_I8 = 2, DT_I4 = 3, DT_I8P = 4, DT_I4P = 5, DT_I4PH = 6,
    DT_I8PH = 7, DT_BF16T = 8
};

/* 8 x the bytes a weight takes, by DT_* (int4: half a byte; scales and lows apart; DT_BF16T
 * is read as DT_BF16: ``mat_dtype``). */
static const int64_t weight_eighths[8] = {32, 16, 8, 4, 8, 4, 4, 8};

/* The formats packed for AVX512_VNNI (16 output rows a vector). */
INLINE int is_packed(int dtype) { return dtype >= DT_I8P && dtype <= DT_I8PH; }
INLINE int is_i8p(int dtype) { return dtype == DT_I8P || dtype == DT_I8PH; }

typedef struct {
    const void *w;     /* [out, in], row-major (DT_I4: [out, in / 2] bytes) */
    int dtype;         /* DT_* */
    const float *scale, *low; /* DT_I8: scale; DT_I4: scale, low; [out, in / 32] (DT_I4PH:
                                 float16 bits behind the pointers) */
    const float *xsum;        /* DT_I4 without AVX-512: [M, in / 32] sums of activation groups;
                                 DT_I8P / DT_I4P: sums of the int16 activations per block */
    const uint16_t *xb;       /* DT_BF16, DT_I8 with BF16_DOT: the activations in bfloat16 */
    const uint32_t *xp;       /* DT_BF16 by AMX: the activations as AMX's B tiles (``amx_pack``;
                                 one row: ``xb`` itself), or NULL where vectors run it */
    void *conv;               /* batches' weight blocks made once per block (``nt_rows``),
                                 [nth, TILE_RO, in]: DT_I8 as bfloat16 with BF16_DOT, DT_BF16
                                 and DT_I8 as float32 without */
    const int16_t *xq;        /* DT_I8P: activations as int16 per 32 [M, in] */
    const int8_t *xh, *xl;    /* DT_I4P: as 14 bits per 32, q = 128 xh + xl [M, in] each */
    const float *xs;          /* DT_I8P / DT_I4P: their scales [M, in / 32] */
    int64_t in, out;
    const float *x;    /* [M, in] */
    const float *bias; /* [out] or NULL */
    float *y;          /* [M, ldy] */
    int64_t ldy;
    int accumulate;    /* y += x W^T (a residual add) instead of y = */
    int M;
    int tiled;         /* DT_BF16 whose whole 16-row blocks are AMX's A tiles (DT_BF16T) */
} gemv_args;

/* An output's last step, in every kernel: + bias, then stored or added (the residual). */
INLINE void emit(const gemv_args *a, int m, int64_t o, float s) {
    if (a->bias) s += a->bias[o];
    float *dst = a->y + (int64_t)m * a->ldy + o;
    *dst = a->accumulate ? *dst + s : s;
}

/* A 4 x 4 tile's last steps as ``emit`` takes them one by one, 4 outputs
 * a vector (lane-wise the same operations: the same bits). acc[r][b]: weight row o + r,
 * activation row m0 + b. The scalar epilogue was a quarter of a product over 576 inputs. */
INLINE void emit_4x4(const gemv_args *a, int m0, int64_t o, const f32x16 *acc) {
    f32x16 v[16];
    for (int r = 0; r < 4; r++)
        for (int b = 0; b < 4; b++) v[4 * r + b] = acc[r * 4 + b];
    f32x16 s = hsum16(v); /* lane 4b + r: acc[r][b] */
    float sums[16];
    memcpy(sums, &s, 64);
    for (int b = 0; b < 4; b++) {
        f32x4 c, t;
        memcpy(&c, sums + 4 * b, 16);
        if (a->bias) {
            memcpy(&t, a->bias + o, 16);
            c += t;
        }
        float *dst = a->y + (int64_t)(m0 + b) * a->ldy + o;
        if (a->accumulate) {
            memcpy(&t, dst, 16);
            c = t + c;
        }
        memcpy(dst, &c, 16);
    }
}

/* Any other tile's last steps, one output at a time: sums[r * NB + b] (its ``hsum`` and its
 * tail past the last whole vector step), then ``emit``. */
INLINE void emit_tile(const gemv_args *a, int m0, int64_t o, int RO, int NB, const float *sums) {
    for (int r = 0; r < RO; r++)
        for (int b = 0; b < NB; b++) emit(a, m0 + b, o + r, sums[r * NB + b]);
}

/* The scales of the 4 (or 1) weight rows of a tile from row o: DT_I8's [out, in / 32], one
 * per 32-element block; NULL for formats without scales (their loads ignore it). */
INLINE void row_scales(const gemv_args *a, int64_t o, int RO, const float **sc) {
    for (int r = 0; r < RO; r++)
        sc[r] = a->dtype == DT_I8 && a->scale ? a->scale + (o + r) * (a->in / 32) : NULL;
}

/* A one-row tile (decode: every weight row one stream) asks for the line this many bytes
 * ahead: bfloat16 1 KB, where it measured better (in-process decode on a 2-core Zen 3, 3
 * alternating rounds: 22.8 -> 21.2 ms a token by median; again 15.6 -> 15.0 ms the C step,
 * 8 rounds). float32 ``F32_ROW_AHEAD``, which the build sets to 4 KB on Intel CPUs only
 * (``cpu_decode.FLAGS``): its decode step got slower with 1 KB on the Zen 3 (45.7 -> 51.6), and
 * faster with 4 KB on a 2-core Xeon with AMX (C step 18.1 -> 15.3 ms a token; 8 KB the same:
 * bench/RESULTS.md). */
#ifndef F32_ROW_AHEAD
#define F32_ROW_AHEAD 0
#endif
#define ROW_AHEAD(T) (sizeof(T) == 2 ? 1024 : sizeof(T) == 4 ? F32_ROW_AHEAD : 0)

/* RO weight rows against NB activation rows: RO x NB accumulators, each output's products
 * summed in one register over k in steps of 16 (lanes then summed by ``hsum``'s halving
 * tree, the tail of k after): the same order for every RO, NB, M and thread count, so an
 * output has the same bits whatever else is in the batch. A 4 x 4 tile does 16 FMAs per 8
 * loads (compute-bound, for batches); one row is one sequential stream (decode of one
 * request is bound by reading the weights). */
#define NT_TILE(NAME, RO, NB, LOAD, T, TO_F32)                                                 \
    static void NAME(const gemv_args *a, int64_t o, int m0, const void *wrows) {               \
        const int64_t K = a->in, K16 = K & ~(int64_t)15;                                       \
        const T *w = (const T *)wrows;                                                         \
        const float *x = a->x + (int64_t)m0 * K;                                               \
        vfw acc[RO][NB][VPARTS];                                                                   \
        for (int r = 0; r < RO; r++)                                                           \
            for (int b = 0; b < NB; b++)                                                       \
                for (int h = 0; h < VPARTS; h++) acc[r][b][h] = (vfw){0};                          \
        /* the next weight block brought in, as in NT_TILE_DOT */                             \
        const T *next =                                                                        \
            RO > 1 && m0 == 0 && !a->conv && o + 2 * RO <= a->out ? w + RO * K : NULL;         \
        const float *sc[RO];                                                                   \
        row_scales(a, o, RO, sc);                                                              \
        for (int64_t k = 0; k < K16; k += 16) {                                                \
            if (next && k % (64 / sizeof(T)) == 0) /* a line per row */                         \
                for (int r = 0; r < RO; r++) __builtin_prefetch(next + r * K + k, 0, 3);       \
            if (RO == 1 && ROW_AHEAD(T) && k % (64 / sizeof(T)) == 0)                           \
                __builtin_prefetch((const char *)(w + k) + ROW_AHEAD(T), 0, 3);                \
            /* part by part: RO weights live at once, not RO x VPARTS (AVX2 has 16 vectors) */ \
            for (int h = 0; h < VPARTS; h++) {                                                 \
                vfw wv[RO]; /* RO + NB loads per RO x NB FMAs */                               \
                for (int r = 0; r < RO; r++) {                                                 \
                    wv[r] = LOAD(w + r * K + k + VW * h, sc[r], k);                            \
                    KEEP(wv[r]);                                                               \
                }                                                                              \
                for (int b = 0; b < NB; b++) {                                                 \
                    vfw xv = load_vw(x + b * K + k + VW * h);                                  \
                    KEEP(xv);                                                                  \
                    for (int r = 0; r < RO; r++) acc[r][b][h] += wv[r] * xv;                   \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        if (VPARTS == 1 && RO == 4 && NB == 4 && K16 == K) {                                       \
            f32x16 v[16];                                                                      \
            for (int r = 0; r < 4; r++)                                                        \
                for (int b = 0; b < 4; b++) memcpy(&v[r * 4 + b], &acc[r][b][0], 64);          \
            emit_4x4(a, m0, o, v);                                                             \
            return;                                                                            \
        }                                                                                      \
        float sums[RO * NB];                                                                   \
        for (int r = 0; r < RO; r++)                                                           \
            for (int b = 0; b < NB; b++) {                                                     \
                float s = hsum_parts(acc[r][b]);                                               \
                for (int64_t t = K16; t < K; t++) s += TO_F32(w[r * K + t]) * x[b * K + t];    \
                sums[r * NB + b] = s;                                                          \
            }                                                                                  \
        emit_tile(a, m0, o, RO, NB, sums);                                                     \
    }

/* bfloat16 (and int8) weights where the CPU has AVX512_BF16: the activations are rounded to
 * bfloat16 (as torch's bfloat16 products, and its int8 weight-only kernel, do) and each
 * instruction multiplies 32 pairs, summing each two neighbours into one of 16 lanes: twice the
 * products of a float32 FMA. int8 weights become bfloat16 in registers, exactly (an integer of
 * at most 8 bits is a bfloat16), in 5 instructions per 32 against 10 to widen them to float32
 * (measured: a batched int8 product cost 3-4x a bfloat16 one). Order: 32 elements per step
 * into one register per output, then as above. */
#if defined(__AVX512BF16__)
#define BF16_DOT 1
/* One row (decode, where AMX does not take the product) asks for the line this many bytes
 * ahead, into L2 (``DOT_ROW_HINT``): ``cpu_decode.FLAGS`` sets 4 KB on Intel CPUs, as for
 * float32 and int8. A 2-core Xeon with AMX, the step built without AMX, one-row bfloat16
 * decode in process: 10.37 -> 8.30 ms a token (1 KB into L1 9.28; 2 KB 8.59; 8 KB 8.40;
 * into L3 8.01-8.24); untried on AMD's AVX512_BF16 (the Zen 4), where int8's did nothing. */
#ifndef DOT_ROW_AHEAD
#define DOT_ROW_AHEAD 0
#endif
#ifndef DOT_ROW_HINT
#define DOT_ROW_HINT 2
#endif
INLINE __m512bh wload_bf16(const uint16_t *p, const float *sc, int64_t k) {
    (void)sc, (void)k;
    return (__m512bh)_mm512_loadu_si512(p);
}
/* One 32-element block of DT_I8 (k: its first element in the row) as bfloat16: q * scale in
 * float32, rounded to nearest even by the conversion. */
INLINE __m512bh wload_i8(const int8_t *p, const float *sc, int64_t k) {
    const __m512 s = _mm512_set1_ps(sc[k >> 5]);
    __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)p)));
    __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const void *)(p + 16))));
    return _mm512_cvtne2ps_pbh(_mm512_mul_ps(hi, s), _mm512_mul_ps(lo, s));
}
/* A DT_I8 row of n elements (a multiple of 32) as bfloat16: the values ``wload_i8`` makes. */
static void i8_to_bf16(const int8_t *src, const float *sc, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 32)
        _mm512_storeu_si512(dst + i, (__m512i)wload_i8(src + i, sc, i));
}
#define NT_TILE_DOT(NAME, RO, NB, T, WLOAD, TO_F32)                                            \
    static void NAME(const gemv_args *a, int64_t o, int m0, const void *wrows) {               \
        const int64_t K = a->in, K32 = K & ~(int64_t)31;                                       \
        const T *w = (const T *)wrows;                                                         \
        const uint16_t *x = a->xb + (int64_t)m0 * K;                                           \
        __m512 acc[RO][NB];                                                                    \
        for (int r = 0; r < RO; r++)                                                           \
            for (int b = 0; b < NB; b++) acc[r][b] = _mm512_setzero_ps();                      \
        /* a batch's first activation tile brings the next weight block in (measured: the  \
         * block's first loads from DRAM were a third of the tile's samples; 1.08-1.10x) */ \
        const T *next =                                                                        \
            RO > 1 && m0 == 0 && !a->conv && o + 2 * RO <= a->out ? w + RO * K : NULL;         \
        const float *sc[RO];                                                                   \
        row_scales(a, o, RO, sc);                                                              \
        for (int64_t k = 0; k < K32; k += 32) {                                                \
            __m512bh wv[RO];                                                                   \
            if (next)                                                                          \
                for (int r = 0; r < RO; r++) __builtin_prefetch(next + r * K + k, 0, 3);       \
            if (RO == 1 && DOT_ROW_AHEAD && (k * sizeof(T)) % 64 == 0)                          \
                __builtin_prefetch((const char *)(w + k) + DOT_ROW_AHEAD, 0, DOT_ROW_HINT);    \
            for (int r = 0; r < RO; r++) {                                                     \
                wv[r] = WLOAD(w + r * K + k, sc[r], k);                                        \
                KEEP(wv[r]);                                                                   \
            }                                                                                  \
            for (int b = 0; b < NB; b++) {                                                     \
                __m512bh xv = (__m512bh)_mm512_loadu_si512(x + b * K + k);                     \
                KEEP(xv);                                                                      \
                for (int r = 0; r < RO; r++) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], wv[r], xv); \
            }                                                                                  \
        }                                                                                      \
        f32x16 accf[RO * NB];                                                                  \
        memcpy(accf, acc, sizeof(accf));                                                       \
        if (RO == 4 && NB == 4 && K32 == K) {                                                  \
            emit_4x4(a, m0, o, accf);                                                          \
            return;                                                                            \
        }                                                                                      \
        float sums[RO * NB];                                                                   \
        for (int r = 0; r < RO; r++)                                                           \
            for (int b = 0; b < NB; b++) {                                                     \
                float s = hsum(accf[r * NB + b]);                                              \
                for (int64_t t = K32; t < K; t++)                                              \
                    s += TO_F32(w[r * K + t]) * bf16_to_f32(x[b * K + t]);                     \
                sums[r * NB + b] = s;                                                          \
            }                                                                                  \
        emit_tile(a, m0, o, RO, NB, sums);                                                     \
    }
#else
#define BF16_DOT 0
#endif

/* The six tile shapes (weight rows x activation rows) of a kernel family P, made by TILE
 * (NT_TILE or NT_TILE_DOT) with its remaining arguments; ``TILE_SET`` lists them. */
#define TILE_SHAPES(TILE, P, ...)                                                              \
    TILE(P##_1x1, 1, 1, __VA_ARGS__)                                                           \
    TILE(P##_1x2, 1, 2, __VA_ARGS__)                                                           \
    TILE(P##_1xn, 1, TILE_NB, __VA_ARGS__)                                                     \
    TILE(P##_rx1, TILE_RO, 1, __VA_ARGS__)                                                     \
    TILE(P##_rx2, TILE_RO, 2, __VA_ARGS__)                                                     \
    TILE(P##_rxn, TILE_RO, TILE_NB, __VA_ARGS__)

INLINE float f32_id(float v) { return v; }
/* The tails of k past the last whole block: DT_I8 has none (its rows are whole blocks). */
INLINE float i8_to_f32(int8_t v) { return (float)v; }

/* NT_TILE's loads of VW weights (sc, k: DT_I8's row scales and the block's first element). */
INLINE vfw tload_f32(const float *p, const float *sc, int64_t k) {
    (void)sc, (void)k;
    return load_vw(p);
}
INLINE vfw tload_bf16(const uint16_t *p, const float *sc, int64_t k) {
    (void)sc, (void)k;
    return load_bf16_vw(p);
}
/* q * scale in float32 rounded to bfloat16 (nearest even), as ``wload_i8`` and ``Int8Linear``
 * (q = (q ^ 0x80) - 128 converts exactly; gcc scalarises a sign-extending conversion). */
INLINE vfw tload_i8(const int8_t *p, const float *sc, int64_t k) {
    u8xw v;
    memcpy(&v, p, sizeof v);
    vfw f = __builtin_convertvector(__builtin_convertvector(v ^ 0x80, i32xw), vfw);
    f = (f - 128.0f) * sc[k >> 5];
    u32xw u;
    memcpy(&u, &f, sizeof u);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u; /* finite weights: no NaN case */
    memcpy(&f, &u, sizeof f);
    return f;
}

TILE_SHAPES(NT_TILE, nt_f32, tload_f32, float, f32_id)
#if BF16_DOT
TILE_SHAPES(NT_TILE_DOT, nt_bf16d, uint16_t, wload_bf16, bf16_to_f32)
TILE_SHAPES(NT_TILE_DOT, nt_i8d, int8_t, wload_i8, i8_to_f32)
#else
TILE_SHAPES(NT_TILE, nt_bf16, tload_bf16, uint16_t, bf16_to_f32)
TILE_SHAPES(NT_TILE, nt_i8, tload_i8, int8_t, i8_to_f32)
#endif


/* DT_I4 with AVX-512: each group's 16 possible weights, scale * code + low, are one vector
 * (one FMA), and every code picks its weight from it (vpermps): no widening to float and no
 * separate sum of the lows. Four accumulators per activation row, two groups a step: with
 * two, one row's FMAs waited on each other (a chain of 4 cycles per group). Order: group pairs
 * in sequence into the four, then (0 + 1) + (2 + 3); fixed for any NB. */
#if defined(__AVX512F__)
#define I4_TABLE 1
INLINE void i4_weights(const uint8_t *w, const float *sc, const float *lo, int64_t g, __m512 *w0,
                       __m512 *w1) {
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m128i nib = _mm_set1_epi8(15);
    __m128i v = _mm_loadu_si128((const void *)(w + 16 * g));
    __m512 tbl = _mm512_fmadd_ps(iota, _mm512_set1_ps(sc[g]), _mm512_set1_ps(lo[g]));
    *w0 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(v, nib)), tbl);
    *w1 = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(v, 4), nib)),
                                tbl);
}
#define NT4_ROW(NAME, NB)                                                                      \
    static void NAME(const gemv_args *a, int64_t o, int m0, const void *wrows) {               \
        const int64_t K = a->in, G = K / 32;                                                   \
        const uint8_t *w = (const uint8_t *)wrows;                                             \
        const float *sc = a->scale + o * G, *lo = a->low + o * G;                              \
        __m512 acc[NB][4];                                                                     \
        for (int b = 0; b < NB; b++)                                                           \
            for (int j = 0; j < 4; j++) acc[b][j] = _mm512_setzero_ps();                       \
        int64_t g = 0;                                                                         \
        for (; g + 2 <= G; g += 2) {                                                           \
            __m512 w0, w1, w2, w3;                                                             \
            i4_weights(w, sc, lo, g, &w0, &w1);                                                \
            i4_weights(w, sc, lo, g + 1, &w2, &w3);                                            \
            for (int b = 0; b < NB; b++) {                                                     \
                const float *x = a->x + (int64_t)(m0 + b) * K + 32 * g;                        \
                acc[b][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[b][0]);                \
                acc[b][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[b][1]);           \
                acc[b][2] = _mm512_fmadd_ps(w2, _mm512_loadu_ps(x + 32), acc[b][2]);           \
                acc[b][3] = _mm512_fmadd_ps(w3, _mm512_loadu_ps(x + 48), acc[b][3]);           \
            }                                                                                  \
        }                                                                                      \
        if (g < G) {                                                                           \
            __m512 w0, w1;                                                                     \
            i4_weights(w, sc, lo, g, &w0, &w1);                                                \
            for (int b = 0; b < NB; b++) {                                                     \
                const float *x = a->x + (int64_t)(m0 + b) * K + 32 * g;                        \
                acc[b][0] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x), acc[b][0]);                \
                acc[b][1] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), acc[b][1]);           \
            }                                                                                  \
        }                                                                                      \
        for (int b = 0; b < NB; b++) {                                                         \
            __m512 t = _mm512_add_ps(_mm512_add_ps(acc[b][0], acc[b][1]),                      \
                                     _mm512_add_ps(acc[b][2], acc[b][3]));                     \
            f32x16 v;                                                                          \
            memcpy(&v, &t, 64);                                                                \
            emit(a, m0 + b, o, hsum(v));                                                       \
        }                                                                                      \
    }
#else
#define I4_TABLE 0
/* Without AVX-512: the scale is folded into the codes before the product; the lows meet the
 * group sums of the activations. Order: groups in sequence, then the lows' sum; fixed for
 * any NB. */
#define NT4_ROW(NAME, NB)                                                                      \
    static void NAME(const gemv_args *a, int64_t o, int m0, const void *wrows) {               \
        const int64_t K = a->in, G = K / 32;                                                   \
        const uint8_t *w = (const uint8_t *)wrows;                                             \
        const float *sc = a->scale + o * G, *lo = a->low + o * G;                              \
        f32x16 acc[NB][2];                                                                     \
        float lows[NB];                                                                        \
        for (int b = 0; b < NB; b++) {                                                         \
            acc[b][0] = acc[b][1] = splat(0.0f);                                               \
            lows[b] = 0.0f;                                                                    \
        }                                                                                      \
        for (int64_t g = 0; g < G; g++) {                                                      \
            u8x16 v;                                                                           \
            memcpy(&v, w + 16 * g, 16);                                                        \
            f32x16 s = splat(sc[g]);                                                           \
            f32x16 c0 = u8_to_f32(v & 15) * s;                           \
            f32x16 c1 = u8_to_f32(v >> 4) * s;                           \
            for (int b = 0; b < NB; b++) {                                                     \
                const float *x = a->x + (int64_t)(m0 + b) * K + 32 * g;                        \
                acc[b][0] += c0 * load_f32(x);                                                 \
                acc[b][1] += c1 * load_f32(x + 16);                                            \
                lows[b] += lo[g] * a->xsum[(int64_t)(m0 + b) * G + g];                         \
            }                                                                                  \
        }                                                                                      \
        for (int b = 0; b < NB; b++) {                                                         \
            float s = hsum(acc[b][0] + acc[b][1]) + lows[b];                                   \
            emit(a, m0 + b, o, s);                                                             \
        }                                                                                      \
    }

#endif

NT4_ROW(nt_i4_1, 1)
NT4_ROW(nt_i4_2, 2)
NT4_ROW(nt_i4_4, 4)

/* DT_I8P and DT_I4P: the codes of DT_I8 / DT_I4 packed for AVX512_VNNI (integer dot products
 * summed into 32-bit lanes) against activations quantized per 32-element block, s = amax / top
 * and q = x / s to nearest even: int8 by ``vpdpwssd`` against int16 (top 32767), int4 by
 * ``vpdpbusd`` against 14 bits split in two bytes (top 8191; below). An error of 2^-16 or 2^-14
 * of the block's largest value: 30-100x below the bfloat16 rounding of torch's weight-only
 * kernels, so still weight-only quantization in effect (int8 activations, llama.cpp's Q8_0 x
 * Q8_0, cost int4 greedy agreement 97.4% -> 88.0%: bench_quant_accuracy). Converting int8 weights to bfloat16
 * cost ~8 instructions per 32 weights, so one decode row was bound by the conversion, not by
 * memory (64% of the read bandwidth where bfloat16 weights stream at 85-90%: bench_machine).
 * Here lanes are 16 output rows: a weight vector is widened once (int8 or 4-bit codes to
 * int16) for every activation row, there is no horizontal sum, and per block
 * acc += float(dot) * (s_w * s_x) (int4: s_x * (scale * dot + low * sum(q_x))), blocks in
 * sequence: a row's bits do not depend on the other rows or the thread count.
 * Layouts, per group of 16 rows g (then [in / 32][16] float32 scales, and int4's lows):
 *  - DT_I8P: codes [in / 2][16][2] (lane r: row 16g + r's codes k, k + 1);
 *  - DT_I4P: 64 bytes per 8 codes of the 16 rows: byte 4r + i holds code k0 + i of row r in
 *    its low nibble and code k0 + 4 + i in its high one;
 *  - DT_I4PH: DT_I4P with float16 scales and lows (GGUF Q4_0 / Q4_1 store theirs so: exact,
 *    and a sixth fewer bytes to read than float32).
 *  - DT_I8PH: DT_I8P with float16 scales (GGUF Q8_0's are: exact, 6% fewer bytes). */
/* the pair of int16 activations k, k + 1 as one 32-bit lane (the packed kernels' broadcast) */
INLINE int32_t x_pair(const int16_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
/* four activation bytes, k .. k + 3, as one lane */
INLINE int32_t x_quad(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}
/* Eight activation rows of a packed format as two tiles of four: an 8-row tile's sums fill
 * AVX2's 16 registers and spill; with AVX-512's 32 the 8-row VNNI tiles were slower than two of
 * 4 too (98,304 x 576 and x 1536 products from memory, 2 threads of a Zen 4, alternating: int8
 * 8 / 16 / 32 rows 1.05-1.09x / 1.07-1.10x / 1.11x, int4 1.04-1.12x / 1.07-1.13x / 1.13-1.16x,
 * the same bits: bench/RESULTS.md). */
#define TWO_FOURS(NAME, FOUR)                                                                  \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        FOUR(a, g, m0);                                                                        \
        FOUR(a, g, m0 + 4);                                                                    \
    }
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define I8_VNNI 1
#define PACKED_DOT 2
/* x_pair of row b at k, in every lane */
#define X_PAIR(b, k) _mm512_set1_epi32(x_pair(xq + (int64_t)(b) * K + (k)))
/* the end of a tile: + bias, then stored or added (the residual) */
INLINE void emit16(const gemv_args *a, int64_t g, int m, __m512 v) {
    float *dst = a->y + (int64_t)m * a->ldy + 16 * g;
    if (a->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(a->bias + 16 * g));
    if (a->accumulate) v = _mm512_add_ps(_mm512_loadu_ps(dst), v);
    _mm512_storeu_ps(dst, v);
}
/* A group's first activation tile (a one-row decode's only one, a batch's first: the one that
 * reads the codes from memory) asks for the codes' line this many bytes ahead, into L2
 * (prefetcht1). On a 2-core Zen 4 it gained nothing at 1-4 KB (into L1); on a 2-core Xeon with
 * AMX (model 167) the hardware's prefetch alone read SmolLM2's small int8 products at 22-26
 * GB/s against a 30 GB/s bound, and the int8 decode step's C time went 5,950 -> 4,989 us a
 * token at 4 KB into L1 (1 KB: 5,943 -> 5,862; 16 KB 5,926 -> 5,311), and from there 5,308 ->
 * 4,664 into L2 (into L3 the same; non-temporal 13,387: bench/RESULTS.md). The head screen,
 * int8 whatever the model's format, runs it too. For batches (first tiles only, here and in
 * int4's), in-process decode of 32 distinct prompts 3.15 -> 3.00 s, of 8 conversations 2.08 ->
 * 1.70 s (int4 2.93 -> 2.82, 1.69 -> 1.46). Bits unchanged. */
#define I8_VNNI_AHEAD 4096
#define NT8P_TILE(NAME, NB, ST, LOAD16)                                                        \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        const int64_t K = a->in, NBLK = K / 32;                                                \
        const int8_t *w = (const int8_t *)a->w + g * 16 * K;                                   \
        const ST *sw = (const ST *)a->scale + g * 16 * NBLK;                                   \
        const int16_t *xq = a->xq + (int64_t)m0 * K;                                           \
        const float *xs = a->xs + (int64_t)m0 * NBLK;                                          \
        __m512 f[NB];                                                                          \
        for (int b = 0; b < NB; b++) f[b] = _mm512_setzero_ps();                               \
        for (int64_t blk = 0; blk < NBLK; blk++) {                                             \
            __m512i e[NB], o[NB]; /* two chains: integer sums, exact in any order */           \
            for (int b = 0; b < NB; b++) e[b] = o[b] = _mm512_setzero_si512();                 \
            const int8_t *wb = w + blk * 512;                                                  \
            for (int j = 0; j < 16; j += 2) {                                                  \
                if (m0 == 0) __builtin_prefetch(wb + 32 * j + I8_VNNI_AHEAD, 0, 2);                \
                const __m256i *p = (const __m256i *)(wb + 32 * j);                             \
                __m512i w0 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(p));                      \
                __m512i w1 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(p + 1));                  \
                for (int b = 0; b < NB; b++) {                                                 \
                    e[b] = _mm512_dpwssd_epi32(e[b], w0, X_PAIR(b, blk * 32 + 2 * j));         \
                    o[b] = _mm512_dpwssd_epi32(o[b], w1, X_PAIR(b, blk * 32 + 2 * j + 2));     \
                }                                                                              \
            }                                                                                  \
            __m512 s = LOAD16(sw + blk * 16);                                                  \
            for (int b = 0; b < NB; b++) {                                                     \
                __m512 dot = _mm512_cvtepi32_ps(_mm512_add_epi32(e[b], o[b]));                 \
                f[b] = _mm512_fmadd_ps(dot, _mm512_mul_ps(s, _mm512_set1_ps(xs[b * NBLK + blk])), \
                                       f[b]);                                                  \
            }                                                                                  \
        }                                                                                      \
        for (int b = 0; b < NB; b++) emit16(a, g, m0 + b, f[b]);                               \
    }
/* A group's first activation tile asks for the codes' line this many bytes ahead (first for
 * one row, then for a batch's first tile too: ``I8_VNNI_AHEAD``): the int4 kernel
 * does 16 ``vpdpbusd`` per 256 bytes of codes (40 GB/s a core from L2 on a 2-core Zen 4), and
 * with the hardware's prefetch alone it read memory slower than the int8 kernel. 3072 x 576
 * products (a SmolLM2 gate/up) on huge pages, from memory, median GB/s: one thread 18.3
 * without, 24.1 at 2 KB, 26.7 at 4 KB, 26.9 at 8 KB; two threads 29.6, 31.6, 32.0, 31.6. The
 * int4 decode step's C time at 2 KB: 2,900 / 3,193 -> 2,686 / 2,838 us (min / median of 8,
 * alternated in one process; 4 KB the same). The int8 kernel (half the instructions a byte)
 * gained nothing from the same at 1-4 KB there (``I8_VNNI_AHEAD``: it does on a Xeon). */
#define I4_VNNI_AHEAD 4096
/* int4 with the activations in 14 bits split in two bytes, q = 128 h + l (h in -64..63, l in
 * 0..127): codes (0..15) are ``vpdpbusd``'s unsigned operand as they are, so 4 codes per lane
 * meet 4 activation bytes with no widening (the int16 kernel widened every code pair to 16
 * bits: 20 instructions per 64 bytes of codes against 12 here). */
#define NT4P_TILE(NAME, NB, ST, LOAD16)                                                        \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        const int64_t K = a->in, NBLK = K / 32;                                                \
        const uint8_t *w = (const uint8_t *)a->w + g * 8 * K;                                  \
        const ST *sd = (const ST *)a->scale + g * 16 * NBLK;                                   \
        const ST *sm = (const ST *)a->low + g * 16 * NBLK;                                     \
        const int8_t *xh = a->xh + (int64_t)m0 * K, *xl = a->xl + (int64_t)m0 * K;             \
        const float *xs = a->xs + (int64_t)m0 * NBLK, *xz = a->xsum + (int64_t)m0 * NBLK;      \
        const __m512i nib = _mm512_set1_epi8(15);                                              \
        __m512 f[NB];                                                                          \
        for (int b = 0; b < NB; b++) f[b] = _mm512_setzero_ps();                               \
        for (int64_t blk = 0; blk < NBLK; blk++) {                                             \
            /* integer sums of the high and low bytes (exact); up to 2 rows, w1's apart from \
             * w0's (hi1, lo1): four chains, so that a vpdpbusd does not wait on the one      \
             * before it (one row from L2: 46 -> 48 GB/s a thread; the same integers, so the  \
             * same bits); more rows have chains enough, and 4 x 8 would not fit the registers */ \
            __m512i hi[NB], lo[NB], hi1[NB], lo1[NB];                                          \
            __m512i *h1 = NB <= 2 ? hi1 : hi, *l1 = NB <= 2 ? lo1 : lo;                        \
            for (int b = 0; b < NB; b++) hi[b] = lo[b] = hi1[b] = lo1[b] = _mm512_setzero_si512(); \
            for (int c = 0; c < 4; c++) { /* codes k0 .. k0 + 7, k0 = blk * 32 + 8c */         \
                if (m0 == 0) __builtin_prefetch(w + (blk * 4 + c) * 64 + I4_VNNI_AHEAD, 0, 3);  \
                __m512i v = _mm512_loadu_si512(w + (blk * 4 + c) * 64);                        \
                __m512i w0 = _mm512_and_si512(v, nib);                                         \
                __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(v, 4), nib);                   \
                const int64_t k0 = blk * 32 + 8 * c;                                           \
                for (int b = 0; b < NB; b++) {                                                 \
                    const int64_t o = (int64_t)b * K + k0;                                     \
                    hi[b] = _mm512_dpbusd_epi32(hi[b], w0, _mm512_set1_epi32(x_quad(xh + o))); \
                    lo[b] = _mm512_dpbusd_epi32(lo[b], w0, _mm512_set1_epi32(x_quad(xl + o))); \
                    h1[b] = _mm512_dpbusd_epi32(h1[b], w1, _mm512_set1_epi32(x_quad(xh + o + 4))); \
                    l1[b] = _mm512_dpbusd_epi32(l1[b], w1, _mm512_set1_epi32(x_quad(xl + o + 4))); \
                }                                                                              \
            }                                                                                  \
            __m512 d = LOAD16(sd + blk * 16), m = LOAD16(sm + blk * 16);                       \
            for (int b = 0; b < NB; b++) {                                                     \
                const __m512i h = NB <= 2 ? _mm512_add_epi32(hi[b], hi1[b]) : hi[b];           \
                const __m512i l = NB <= 2 ? _mm512_add_epi32(lo[b], lo1[b]) : lo[b];           \
                __m512i q = _mm512_add_epi32(_mm512_slli_epi32(h, 7), l);                      \
                __m512 u = _mm512_fmadd_ps(d, _mm512_cvtepi32_ps(q),                           \
                                           _mm512_mul_ps(m, _mm512_set1_ps(xz[b * NBLK + blk]))); \
                f[b] = _mm512_fmadd_ps(u, _mm512_set1_ps(xs[b * NBLK + blk]), f[b]);           \
            }                                                                                  \
        }                                                                                      \
        for (int b = 0; b < NB; b++) emit16(a, g, m0 + b, f[b]);                               \
    }
/* 16 scales (or lows) of a block: float32, or float16 widened (exact) */
#define LOAD16_F32(p) _mm512_loadu_ps(p)
#define LOAD16_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
/* a format's kernels for 1, 2, 4 and 8 activation rows (P_1 .. P_8; 8 as two tiles of 4),
 * scales ST read by LOAD */
#define PACKED_SET(TILE, P, ST, LOAD)                                                          \
    TILE(P##_1, 1, ST, LOAD) TILE(P##_2, 2, ST, LOAD) TILE(P##_4, 4, ST, LOAD)                 \
    TWO_FOURS(P##_8, P##_4)
PACKED_SET(NT8P_TILE, nt_i8p, float, LOAD16_F32)
PACKED_SET(NT8P_TILE, nt_i8ph, uint16_t, LOAD16_F16)
PACKED_SET(NT4P_TILE, nt_i4p, float, LOAD16_F32)
PACKED_SET(NT4P_TILE, nt_i4ph, uint16_t, LOAD16_F16)

/* x [M, in] -> per 32-element block q = x / s to nearest even, s = amax / ``top`` (32767:
 * int16 for DT_I8P into xq; 8191: 14 bits for DT_I4P, split into xh = q >> 7 and
 * xl = q & 127), xs (the blocks' scales) and xsum (each block's sum of q, exact in float32). */
static void quantize_x(const float *x, int64_t n_blocks, float top, int16_t *xq, int8_t *xh,
                       int8_t *xl, float *xs, float *xsum) {
    const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n_blocks; i++) {
        __m512 a = _mm512_loadu_ps(x + 32 * i), b = _mm512_loadu_ps(x + 32 * i + 16);
        float amax = _mm512_reduce_max_ps(
            _mm512_max_ps(_mm512_and_ps(a, sign), _mm512_and_ps(b, sign)));
        float s = amax / top, inv = s > 0.0f ? 1.0f / s : 0.0f;
        __m512 iv = _mm512_set1_ps(inv);
        /* round to nearest even (the default rounding mode) */
        __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, iv));
        __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, iv));
        xsum[i] = (float)_mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
        if (xq) {
            _mm256_storeu_si256((void *)(xq + 32 * i), _mm512_cvtepi32_epi16(qa));
            _mm256_storeu_si256((void *)(xq + 32 * i + 16), _mm512_cvtepi32_epi16(qb));
        } else {
            const __m512i low7 = _mm512_set1_epi32(127);
            _mm_storeu_si128((void *)(xh + 32 * i), _mm512_cvtepi32_epi8(_mm512_srai_epi32(qa, 7)));
            _mm_storeu_si128((void *)(xh + 32 * i + 16),
                             _mm512_cvtepi32_epi8(_mm512_srai_epi32(qb, 7)));
            _mm_storeu_si128((void *)(xl + 32 * i), _mm512_cvtepi32_epi8(_mm512_and_si512(qa, low7)));
            _mm_storeu_si128((void *)(xl + 32 * i + 16),
                             _mm512_cvtepi32_epi8(_mm512_and_si512(qb, low7)));
        }
        xs[i] = s;
    }
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define I8_VNNI 0
#define PACKED_DOT 1
/* The packed formats without VNNI (AVX2 alone: Zen 2 / 3, Haswell to Skylake client): the
 * same layouts, a 16-row group taken as two halves of 8 rows (8 lanes of 32 bits). int8 by
 * ``vpmaddwd`` (int16 pairs into 32 bits: ``vpdpwssd`` without its add); int4 by
 * ``vpmaddubsw`` (unsigned codes x signed activation bytes, pairs into 16 bits), a block's
 * 16-bit sums of the high and the low bytes then widened by ``vpmaddwd`` against ones. Every
 * block's integer dot is exact (int4's 16-bit sums stay under 2^15: 8 pairs of at most
 * 2 x 15 x 127), so it is the VNNI kernels' integer, and the float steps after it are theirs
 * lane by lane: the same bits as an AVX512_VNNI build. Measured against the float kernels
 * they replace here (DT_I8's bfloat16 rounding per weight, DT_I4's widening to float32): see
 * bench/RESULTS.md. */
/* An accumulator pinned to a register at this point of the loop: without it gcc unrolls the
 * loop over a block and computes every product before adding any, spilling them to the stack
 * (60 stack accesses in nt_i4ph_1): an int4 row streamed 19.5 GB/s a thread from cache, 24.5
 * pinned (bench/RESULTS.md). The sums, and so the bits, are the same. */
#define PIN(v) __asm__("" : "+x"(v))
#define PIN2(a, b) __asm__("" : "+x"(a), "+x"(b))
/* The first pass over a group (its first half) asks for the line this many bytes ahead: M = 1
 * products of 4096 x 4096 on a 2-core Zen 3 streamed int4 at 13.3 GB/s without, 15.2 with
 * (int8 14.3, 15.0; best of 4); a whole int4 decode step gained ~2% by median. */
#define PACKED_AHEAD 1024
/* the end of a half tile (output rows o .. o + 7): + bias, then stored or added */
INLINE void emit8(const gemv_args *a, int64_t o, int m, __m256 v) {
    float *dst = a->y + (int64_t)m * a->ldy + o;
    if (a->bias) v = _mm256_add_ps(v, _mm256_loadu_ps(a->bias + o));
    if (a->accumulate) v = _mm256_add_ps(_mm256_loadu_ps(dst), v);
    _mm256_storeu_ps(dst, v);
}
/* One accumulator per half and activation row (the two halves are the independent chains
 * the VNNI kernel gets from its two; integer sums, so the same value in any order). */
#define NT8P_TILE(NAME, NB, ST, LOAD8)                                                         \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        const int64_t K = a->in, NBLK = K / 32;                                                \
        const int8_t *w = (const int8_t *)a->w + g * 16 * K;                                   \
        const ST *sw = (const ST *)a->scale + g * 16 * NBLK;                                   \
        const int16_t *xq = a->xq + (int64_t)m0 * K;                                           \
        const float *xs = a->xs + (int64_t)m0 * NBLK;                                          \
        for (int h = 0; h < 2; h++) {                                                          \
            __m256 f[NB];                                                                      \
            for (int b = 0; b < NB; b++) f[b] = _mm256_setzero_ps();                           \
            for (int64_t blk = 0; blk < NBLK; blk++) {                                         \
                __m256i e[NB];                                                                 \
                for (int b = 0; b < NB; b++) e[b] = _mm256_setzero_si256();                    \
                const int8_t *wb = w + blk * 512 + 16 * h;                                     \
                for (int j = 0; j < 16; j++) { /* pair j: codes blk * 32 + 2j, + 1 */          \
                    if (h == 0 && (j & 1) == 0) /* a line ahead in the group's stream */      \
                        __builtin_prefetch(wb + 32 * j + PACKED_AHEAD, 0, 3);                  \
                    __m256i wj = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(wb + 32 * j))); \
                    for (int b = 0; b < NB; b++) {                                             \
                        const __m256i xp =                                                     \
                            _mm256_set1_epi32(x_pair(xq + (int64_t)b * K + blk * 32 + 2 * j)); \
                        e[b] = _mm256_add_epi32(e[b], _mm256_madd_epi16(wj, xp));              \
                        PIN(e[b]);                                                             \
                    }                                                                          \
                }                                                                              \
                __m256 s = LOAD8(sw + blk * 16 + 8 * h);                                       \
                for (int b = 0; b < NB; b++) {                                                 \
                    __m256 dot = _mm256_cvtepi32_ps(e[b]);                                     \
                    f[b] = _mm256_fmadd_ps(                                                    \
                        dot, _mm256_mul_ps(s, _mm256_set1_ps(xs[b * NBLK + blk])), f[b]);      \
                }                                                                              \
            }                                                                                  \
            for (int b = 0; b < NB; b++) emit8(a, 16 * g + 8 * h, m0 + b, f[b]);               \
        }                                                                                      \
    }
#define NT4P_TILE(NAME, NB, ST, LOAD8)                                                         \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        const int64_t K = a->in, NBLK = K / 32;                                                \
        const int8_t *xh = a->xh + (int64_t)m0 * K, *xl = a->xl + (int64_t)m0 * K;             \
        const float *xs = a->xs + (int64_t)m0 * NBLK, *xz = a->xsum + (int64_t)m0 * NBLK;      \
        const __m256i nib = _mm256_set1_epi8(15), one = _mm256_set1_epi16(1);                  \
        for (int h = 0; h < 2; h++) {                                                          \
            const uint8_t *w = (const uint8_t *)a->w + g * 8 * K + 32 * h;                     \
            const ST *sd = (const ST *)a->scale + g * 16 * NBLK + 8 * h;                       \
            const ST *sm = (const ST *)a->low + g * 16 * NBLK + 8 * h;                         \
            __m256 f[NB];                                                                      \
            for (int b = 0; b < NB; b++) f[b] = _mm256_setzero_ps();                           \
            for (int64_t blk = 0; blk < NBLK; blk++) {                                         \
                __m256i hi[NB], lo[NB]; /* 16-bit sums of the high and low bytes: exact */     \
                for (int b = 0; b < NB; b++) hi[b] = lo[b] = _mm256_setzero_si256();           \
                for (int c = 0; c < 4; c++) { /* codes k0 .. k0 + 7, k0 = blk * 32 + 8c */     \
                    if (h == 0) /* a line ahead in the group's stream */                       \
                        __builtin_prefetch(w + (blk * 4 + c) * 64 + PACKED_AHEAD, 0, 3);       \
                    __m256i v = _mm256_loadu_si256((const void *)(w + (blk * 4 + c) * 64));   \
                    __m256i w0 = _mm256_and_si256(v, nib);                                     \
                    __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);               \
                    const int64_t k0 = blk * 32 + 8 * c;                                       \
                    for (int b = 0; b < NB; b++) {                                             \
                        const int64_t o = (int64_t)b * K + k0;                                 \
                        hi[b] = _mm256_add_epi16(                                              \
                            hi[b], _mm256_add_epi16(                                           \
                                       _mm256_maddubs_epi16(w0, _mm256_set1_epi32(x_quad(xh + o))), \
                                       _mm256_maddubs_epi16(w1, _mm256_set1_epi32(x_quad(xh + o + 4))))); \
                        lo[b] = _mm256_add_epi16(                                              \
                            lo[b], _mm256_add_epi16(                                           \
                                       _mm256_maddubs_epi16(w0, _mm256_set1_epi32(x_quad(xl + o))), \
                                       _mm256_maddubs_epi16(w1, _mm256_set1_epi32(x_quad(xl + o + 4))))); \
                        PIN2(hi[b], lo[b]);                                                    \
                    }                                                                          \
                }                                                                              \
                __m256 d = LOAD8(sd + blk * 16), m = LOAD8(sm + blk * 16);                     \
                for (int b = 0; b < NB; b++) {                                                 \
                    __m256i q = _mm256_add_epi32(                                              \
                        _mm256_slli_epi32(_mm256_madd_epi16(hi[b], one), 7),                   \
                        _mm256_madd_epi16(lo[b], one));                                        \
                    __m256 u = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(q),                       \
                                               _mm256_mul_ps(m, _mm256_set1_ps(xz[b * NBLK + blk]))); \
                    f[b] = _mm256_fmadd_ps(u, _mm256_set1_ps(xs[b * NBLK + blk]), f[b]);       \
                }                                                                              \
            }                                                                                  \
            for (int b = 0; b < NB; b++) emit8(a, 16 * g + 8 * h, m0 + b, f[b]);               \
        }                                                                                      \
    }
/* One activation row: both halves of a group in one pass (one stream through its codes, and
 * each activation broadcast once for the 16 rows); the same integers and float steps. */
#define NT8P_ONE(NAME, ST, LOAD8)                                                              \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        const int64_t K = a->in, NBLK = K / 32;                                                \
        const int8_t *w = (const int8_t *)a->w + g * 16 * K;                                   \
        const ST *sw = (const ST *)a->scale + g * 16 * NBLK;                                   \
        const int16_t *xq = a->xq + (int64_t)m0 * K;                                           \
        const float *xs = a->xs + (int64_t)m0 * NBLK;                                          \
        __m256 f0 = _mm256_setzero_ps(), f1 = _mm256_setzero_ps();                             \
        for (int64_t blk = 0; blk < NBLK; blk++) {                                             \
            __m256i e0 = _mm256_setzero_si256(), e1 = _mm256_setzero_si256();                  \
            const int8_t *wb = w + blk * 512;                                                  \
            for (int j = 0; j < 16; j++) {                                                     \
                if ((j & 1) == 0) __builtin_prefetch(wb + 32 * j + PACKED_AHEAD, 0, 3);        \
                const __m256i xp = _mm256_set1_epi32(x_pair(xq + blk * 32 + 2 * j));           \
                __m256i w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(wb + 32 * j))); \
                __m256i w1 =                                                                   \
                    _mm256_cvtepi8_epi16(_mm_loadu_si128((const void *)(wb + 32 * j + 16)));   \
                e0 = _mm256_add_epi32(e0, _mm256_madd_epi16(w0, xp));                          \
                e1 = _mm256_add_epi32(e1, _mm256_madd_epi16(w1, xp));                          \
                PIN2(e0, e1);                                                                  \
            }                                                                                  \
            __m256 sx = _mm256_set1_ps(xs[blk]);                                               \
            f0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e0),                                       \
                                 _mm256_mul_ps(LOAD8(sw + blk * 16), sx), f0);                 \
            f1 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(e1),                                       \
                                 _mm256_mul_ps(LOAD8(sw + blk * 16 + 8), sx), f1);             \
        }                                                                                      \
        emit8(a, 16 * g, m0, f0);                                                              \
        emit8(a, 16 * g + 8, m0, f1);                                                          \
    }
#define NT4P_ONE(NAME, ST, LOAD8)                                                              \
    static void NAME(const gemv_args *a, int64_t g, int m0) {                                  \
        const int64_t K = a->in, NBLK = K / 32;                                                \
        const uint8_t *w = (const uint8_t *)a->w + g * 8 * K;                                  \
        const ST *sd = (const ST *)a->scale + g * 16 * NBLK;                                   \
        const ST *sm = (const ST *)a->low + g * 16 * NBLK;                                     \
        const int8_t *xh = a->xh + (int64_t)m0 * K, *xl = a->xl + (int64_t)m0 * K;             \
        const float *xs = a->xs + (int64_t)m0 * NBLK, *xz = a->xsum + (int64_t)m0 * NBLK;      \
        const __m256i nib = _mm256_set1_epi8(15), one = _mm256_set1_epi16(1);                  \
        __m256 f[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};                              \
        for (int64_t blk = 0; blk < NBLK; blk++) {                                             \
            __m256i hi[2], lo[2];                                                              \
            hi[0] = hi[1] = lo[0] = lo[1] = _mm256_setzero_si256();                            \
            for (int c = 0; c < 4; c++) {                                                      \
                const uint8_t *p = w + (blk * 4 + c) * 64;                                     \
                __builtin_prefetch(p + PACKED_AHEAD, 0, 3);                                    \
                const int64_t k0 = blk * 32 + 8 * c;                                           \
                const __m256i h0 = _mm256_set1_epi32(x_quad(xh + k0));                         \
                const __m256i h4 = _mm256_set1_epi32(x_quad(xh + k0 + 4));                     \
                const __m256i l0 = _mm256_set1_epi32(x_quad(xl + k0));                         \
                const __m256i l4 = _mm256_set1_epi32(x_quad(xl + k0 + 4));                     \
                for (int h = 0; h < 2; h++) {                                                  \
                    __m256i v = _mm256_loadu_si256((const void *)(p + 32 * h));                \
                    __m256i w0 = _mm256_and_si256(v, nib);                                     \
                    __m256i w1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);               \
                    hi[h] = _mm256_add_epi16(hi[h], _mm256_add_epi16(_mm256_maddubs_epi16(w0, h0), \
                                                                     _mm256_maddubs_epi16(w1, h4))); \
                    lo[h] = _mm256_add_epi16(lo[h], _mm256_add_epi16(_mm256_maddubs_epi16(w0, l0), \
                                                                     _mm256_maddubs_epi16(w1, l4))); \
                    PIN2(hi[h], lo[h]);                                                        \
                }                                                                              \
            }                                                                                  \
            const __m256 sz = _mm256_set1_ps(xz[blk]), sx = _mm256_set1_ps(xs[blk]);           \
            for (int h = 0; h < 2; h++) {                                                      \
                __m256i q = _mm256_add_epi32(_mm256_slli_epi32(_mm256_madd_epi16(hi[h], one), 7), \
                                             _mm256_madd_epi16(lo[h], one));                   \
                __m256 u = _mm256_fmadd_ps(LOAD8(sd + blk * 16 + 8 * h), _mm256_cvtepi32_ps(q), \
                                           _mm256_mul_ps(LOAD8(sm + blk * 16 + 8 * h), sz));   \
                f[h] = _mm256_fmadd_ps(u, sx, f[h]);                                           \
            }                                                                                  \
        }                                                                                      \
        emit8(a, 16 * g, m0, f[0]);                                                            \
        emit8(a, 16 * g + 8, m0, f[1]);                                                        \
    }
#define LOAD8_F32(p) _mm256_loadu_ps(p)
#define LOAD8_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))
/* a format's kernels for 1, 2, 4 and 8 activation rows (P_1 .. P_8), scales ST read by LOAD:
 * one row in one pass (ONE), 2 and 4 by tiles, 8 as two tiles of 4 */
#define PACKED_SET(ONE, TILE, P, ST, LOAD)                                                     \
    ONE(P##_1, ST, LOAD) TILE(P##_2, 2, ST, LOAD) TILE(P##_4, 4, ST, LOAD) TWO_FOURS(P##_8, P##_4)
PACKED_SET(NT8P_ONE, NT8P_TILE, nt_i8p, float, LOAD8_F32)
PACKED_SET(NT8P_ONE, NT8P_TILE, nt_i8ph, uint16_t, LOAD8_F16)
PACKED_SET(NT4P_ONE, NT4P_TILE, nt_i4p, float, LOAD8_F32)
PACKED_SET(NT4P_ONE, NT4P_TILE, nt_i4ph, uint16_t, LOAD8_F16)

/* ``quantize_x`` of the VNNI build with 8 lanes: the same maximum, scale, rounding and sums
 * (the same values), narrowed by saturating packs (no value is out of range). */
INLINE __m256i pack32_16(__m256i a, __m256i b) { /* 16 int32 -> 16 int16, in order */
    return _mm256_permute4x64_epi64(_mm256_packs_epi32(a, b), 0xD8);
}
static void quantize_x(const float *x, int64_t n_blocks, float top, int16_t *xq, int8_t *xh,
                       int8_t *xl, float *xs, float *xsum) {
    const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int64_t i = 0; i < n_blocks; i++) {
        __m256 v[4];
        for (int j = 0; j < 4; j++) v[j] = _mm256_loadu_ps(x + 32 * i + 8 * j);
        __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], sign), _mm256_and_ps(v[1], sign)),
                                  _mm256_max_ps(_mm256_and_ps(v[2], sign), _mm256_and_ps(v[3], sign)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4);
        float s = amax / top, inv = s > 0.0f ? 1.0f / s : 0.0f;
        __m256 iv = _mm256_set1_ps(inv);
        __m256i q[4]; /* round to nearest even (the default rounding mode) */
        for (int j = 0; j < 4; j++) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], iv));
        __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
        t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
        xsum[i] = (float)_mm_cvtsi128_si32(t4);
        if (xq) {
            _mm256_storeu_si256((void *)(xq + 32 * i), pack32_16(q[0], q[1]));
            _mm256_storeu_si256((void *)(xq + 32 * i + 16), pack32_16(q[2], q[3]));
        } else {
            const __m256i low7 = _mm256_set1_epi32(127);
            __m256i h[4], l[4];
            for (int j = 0; j < 4; j++) {
                h[j] = _mm256_srai_epi32(q[j], 7);
                l[j] = _mm256_and_si256(q[j], low7);
            }
            __m256i hb = _mm256_packs_epi16(pack32_16(h[0], h[1]), pack32_16(h[2], h[3]));
            __m256i lb = _mm256_packs_epi16(pack32_16(l[0], l[1]), pack32_16(l[2], l[3]));
            _mm256_storeu_si256((void *)(xh + 32 * i), _mm256_permute4x64_epi64(hb, 0xD8));
            _mm256_storeu_si256((void *)(xl + 32 * i), _mm256_permute4x64_epi64(lb, 0xD8));
        }
        xs[i] = s;
    }
}
#else
#define I8_VNNI 0
#define PACKED_DOT 0
#endif

#if PACKED_DOT
typedef void (*ntp_kernel)(const gemv_args *, int64_t, int);

/* Output rows [o0, o1), whole groups of 16; activation rows 8 at a time, while the group's
 * codes (16 x in bytes, or half that) stay in L1. */
static void ntp_rows(const gemv_args *a, int64_t o0, int64_t o1) {
    static const ntp_kernel k8[4] = {nt_i8p_1, nt_i8p_2, nt_i8p_4, nt_i8p_8};
    static const ntp_kernel k8h[4] = {nt_i8ph_1, nt_i8ph_2, nt_i8ph_4, nt_i8ph_8};
    static const ntp_kernel k4[4] = {nt_i4p_1, nt_i4p_2, nt_i4p_4, nt_i4p_8};
    static const ntp_kernel k4h[4] = {nt_i4ph_1, nt_i4ph_2, nt_i4ph_4, nt_i4ph_8};
    const ntp_kernel *k = a->dtype == DT_I8P    ? k8
                          : a->dtype == DT_I8PH ? k8h
                          : a->dtype == DT_I4P  ? k4
                                                : k4h;
    for (int64_t g = o0 / 16; g < o1 / 16; g++) {
        int m = 0;
        for (; m + 8 <= a->M; m += 8) k[3](a, g, m);
        for (; m + 4 <= a->M; m += 4) k[2](a, g, m);
        for (; m + 2 <= a->M; m += 2) k[1](a, g, m);
        for (; m < a->M; m++) k[0](a, g, m);
    }
}
#endif

/* (args, first output row o, first activation row m0, the weight rows of o on) */
typedef void (*nt_kernel)(const gemv_args *, int64_t, int, const void *);

/* Tiles by (weight rows, activation rows): [ro == TILE_RO][nb: 1, 2, TILE_NB]. int4 has its
 * own kernels, one weight row each and 1, 2 or 4 activation rows (its codes are unpacked once for all NB activation rows). */
#define TILE_SET(P) {{P##_1x1, P##_1x2, P##_1xn}, {P##_rx1, P##_rx2, P##_rxn}}
static const nt_kernel tiles[4][2][3] = {
#if BF16_DOT
    TILE_SET(nt_f32), TILE_SET(nt_bf16d), TILE_SET(nt_i8d),
#else
    TILE_SET(nt_f32), TILE_SET(nt_bf16), TILE_SET(nt_i8),
#endif
    {{nt_i4_1, nt_i4_2, nt_i4_4}, {NULL, NULL, NULL}}};

/* Without AVX512_BF16, DT_BF16 and DT_I8 weights are widened to float32 in registers, by the
 * same loads the tiles use: a batch of M activation rows widened each weight M / TILE_NB times.
 * ``widen_rows`` does it once per block of TILE_RO rows, into ``conv``, for the float32 tiles:
 * the same values in the same order (the same bits). */
#if !BF16_DOT
static void widen_rows(const gemv_args *a, int64_t o, const void *wr, float *dst) {
    const int64_t K = a->in, K8 = K & ~(int64_t)(VW - 1);
    const float *sc[TILE_RO];
    row_scales(a, o, TILE_RO, sc);
    for (int r = 0; r < TILE_RO; r++) {
        float *d = dst + r * K;
        if (a->dtype == DT_BF16) {
            const uint16_t *w = (const uint16_t *)wr + r * K;
            int64_t k = 0;
            for (; k < K8; k += VW) store_vw(d + k, tload_bf16(w + k, NULL, k));
            for (; k < K; k++) d[k] = bf16_to_f32(w[k]);
        } else { /* DT_I8: whole 32-element blocks */
            const int8_t *w = (const int8_t *)wr + r * K;
            for (int64_t k = 0; k < K; k += VW) store_vw(d + k, tload_i8(w + k, sc[r], k));
        }
    }
}
#endif

/* Output rows [o0, o1). With one activation row a weight row is one stream (also with AVX2:
 * 4 rows at a time, 4 streams, lost a float32 decode step 24 -> 19 tok/s and a bfloat16 one
 * 37 -> 30 on a 2-core Zen 3, though they won on 4096 x 4096 products); with 4 or more,
 * blocks of TILE_RO weight rows stay in L1 while every activation row passes over them.
 * Where ``conv`` is given, each block is converted once into it and run by other tiles:
 * int8 made bfloat16 with AVX512_BF16 (``i8_to_bf16``), bfloat16 and int8 made float32
 * without (``widen_rows``); the same values in the same order as the block's own tiles (same
 * bits), without converting each weight again for every activation tile. */
#define TILE_MIN_ROWS 4 /* activation rows from which weight rows go in blocks of TILE_RO */

/* The activation rows from which a format's weight rows go in blocks of TILE_RO; below it each
 * weight row is one stream through its 1 x n tiles. With AVX-512, bfloat16 (by AVX512_BF16)
 * keeps the 1 x n tiles up to 11 rows and float32 up to 7: a 4 x 4 tile of a few activation
 * rows is bound by neither the reads nor the multiplies (a 98,304 x 576 product from memory,
 * 2 threads of a Zen 4, alternating in one process, min of 7: bfloat16 4 rows 5.28 -> 3.68
 * ms, 6 rows 5.88 -> 3.89, 8 rows 7.02 -> 5.45, 11 rows 8.16 -> 7.70, 12 at 1 x n no faster;
 * float32 4 rows 9.04 -> 7.43, 6 rows 10.56 -> 8.74, 8 at 1 x n 11.5 -> 12.6: bench/RESULTS.md).
 * The bits are the same either way (see NT_TILE). */
INLINE int tile_min_rows(int dtype) {
    (void)dtype;
#if VW == 16
    if (dtype == DT_BF16 && BF16_DOT) return 12;
    if (dtype == DT_F32) return 8;
#endif
    return TILE_MIN_ROWS;
}

/* ---- bfloat16 products by AMX ------------------------------------------------------------- */

/* Where the CPU has AMX (AMX_TILE, AMX_BF16) and the kernel grants its tile state to this
 * process, a bfloat16 product of ``in`` a multiple of 32 runs by ``tdpbf16ps``, for one
 * activation row as for 64: the weights are tile A (16 rows of 32 inputs a tile), loaded a
 * row apart from DT_BF16's [out, in], or 64 bytes apart from DT_BF16T's tiles (the fused
 * step's copy: its tiles stream in order, each block's lines asked for ``AMX_AHEAD`` ahead;
 * a one-row decode step's C 10.3 -> 9.0 ms on a 2-core Xeon, bench/RESULTS.md), the
 * activations tile B (16 rows a tile, their bfloat16 pairs transposed once per product,
 * ``amx_pack``; one row: the row itself as one column, ``amx_bf16_rows_1``), and each
 * 16 x 16 float32 tile of sums is emitted as ``emit`` would (``amx_emit``). An output's sum
 * runs over its 32-input chunks in order, each chunk's pairs as the instruction adds them,
 * whatever the other rows of the batch: a row's bits are the same alone and in a batch, on any
 * thread count, as the vector kernels' are. (Not the vector kernels' bits: AMX rounds its chunk
 * sums its own way and flushes denormals.) The rows past a product's last whole 16-row block
 * run by vectors (the same rows whatever M). */
#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__) && BF16_DOT
#define AMX_BF16 1
#include <sys/syscall.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} __attribute__((aligned(64))) amx_config;

/* -1 until asked; then 1 where the kernel granted the tile state, else 0 (``plait_amx``) */
static int amx_state = -1;

static int amx_granted(void) {
    if (amx_state < 0)
        amx_state = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
    return amx_state;
}

/* tiles 0-3: sums (2 weight blocks x 2 activation groups), 4-5: weights (16 x 64 bytes),
 * 6-7: activations; the sums and activations ``cols`` bytes wide (64: 16 activation rows; 4:
 * one row, ``amx_bf16_rows_1``) */
static void amx_configure(int cols) {
    amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = 16;
        c.colsb[t] = t == 4 || t == 5 ? 64 : cols;
    }
    _tile_loadconfig(&c);
}

/* DT_BF16T asks for each block's lines this many bytes ahead, into L2, as it loads the block's
 * tiles (a block's tiles stream one after another; DT_BF16's tile loads take 16 lines a row
 * apart, which the hardware's prefetch alone followed at 20-26 GB/s in a decode step). In the
 * one-row decode step, C time a token against DT_BF16 in one process: 256 bytes 10,369 ->
 * 9,331 us, 512 10,276 -> 8,977, 1024 10,471 -> 9,626; 2048 gained nothing in products alone. */
#ifndef AMX_AHEAD
#define AMX_AHEAD 512
#endif
/* DT_BF16T: chunk c's lines of weight blocks w0 (and w1 where ``two``) ``AMX_AHEAD`` ahead,
 * into L2 */
INLINE void amx_ahead(const char *w0, const char *w1, int two, int64_t c) {
    for (int l = 0; l < 16; l++) __builtin_prefetch(w0 + 1024 * c + AMX_AHEAD + 64 * l, 0, 2);
    if (two)
        for (int l = 0; l < 16; l++) __builtin_prefetch(w1 + 1024 * c + AMX_AHEAD + 64 * l, 0, 2);
}

/* B tiles of ``xb`` ([M, K] bfloat16): [groups of 16 rows][K / 32][16 pairs][16 rows] of
 * 32-bit bfloat16 pairs, the rows past M zero. */
static void amx_pack(const uint16_t *xb, int M, int64_t K, uint32_t *xp) {
    const int64_t kc = K / 32, groups = (M + 15) / 16;
    if (M % 16) /* the last group's rows past M: zero (one pass, not a test per pair) */
        memset(xp + (groups - 1) * kc * 256, 0, sizeof(uint32_t) * 256 * (size_t)kc);
    for (int64_t g = 0; g < groups; g++) {
        const int rows = M - 16 * g < 16 ? M - 16 * (int)g : 16;
        for (int64_t c = 0; c < kc; c++) {
            uint32_t *t = xp + (g * kc + c) * 256;
            for (int j = 0; j < rows; j++) {
                const uint32_t *src = (const uint32_t *)(xb + (16 * g + j) * K) + 16 * c;
                for (int p = 0; p < 16; p++) t[p * 16 + j] = src[p];
            }
        }
    }
}

/* A 16 x 16 tile of sums (ct[r][j]: weight row o + r, activation row 16 g + j) as ``emit``
 * takes them, an activation row's 16 outputs a vector (gathered from the tile's column;
 * lane-wise the same operations: the same bits). One at a time, the emits were most of a
 * 32-row product's time. */
INLINE void amx_emit(const gemv_args *a, int64_t o, int64_t g, const float *ct) {
    const int m0 = (int)(16 * g), n = a->M - m0 < 16 ? a->M - m0 : 16;
    const __m512i col = _mm512_set_epi32(240, 224, 208, 192, 176, 160, 144, 128, 112, 96, 80,
                                         64, 48, 32, 16, 0);
    for (int j = 0; j < n; j++) {
        __m512 v = _mm512_i32gather_ps(col, ct + j, 4);
        if (a->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(a->bias + o));
        float *dst = a->y + (int64_t)(m0 + j) * a->ldy + o;
        if (a->accumulate) v = _mm512_add_ps(_mm512_loadu_ps(dst), v);
        _mm512_storeu_ps(dst, v);
    }
}

/* The sums of weight blocks o (and o + 16 where ``two``) with activation groups g (and g + 1
 * where ``both``): the same tdpbf16ps per output in every case. */
#define AMX_BLOCKS(TWO, BOTH)                                                                  \
    do {                                                                                       \
        _tile_zero(0);                                                                         \
        if (TWO) _tile_zero(1);                                                                \
        if (BOTH) _tile_zero(2);                                                               \
        if (TWO && BOTH) _tile_zero(3);                                                        \
        for (int64_t c = 0; c < kc; c++) {                                                     \
            if (ahead) amx_ahead(w0, w1, TWO, c); /* tiled, the first activation group */     \
            _tile_loadd(4, w0 + cstep * c, ld);                                                \
            if (TWO) _tile_loadd(5, w1 + cstep * c, ld);                                       \
            _tile_loadd(6, b0 + 256 * c, 64);                                                  \
            if (BOTH) _tile_loadd(7, b0 + 256 * (kc + c), 64);                                 \
            _tile_dpbf16ps(0, 4, 6);                                                           \
            if (TWO) _tile_dpbf16ps(1, 5, 6);                                                  \
            if (BOTH) _tile_dpbf16ps(2, 4, 7);                                                 \
            if (TWO && BOTH) _tile_dpbf16ps(3, 5, 7);                                          \
        }                                                                                      \
        _tile_stored(0, ct, 64);                                                               \
        amx_emit(a, o, g, ct);                                                                 \
        if (TWO) {                                                                             \
            _tile_stored(1, ct, 64);                                                           \
            amx_emit(a, o + 16, g, ct);                                                        \
        }                                                                                      \
        if (BOTH) {                                                                            \
            _tile_stored(2, ct, 64);                                                           \
            amx_emit(a, o, g + 1, ct);                                                         \
        }                                                                                      \
        if (TWO && BOTH) {                                                                     \
            _tile_stored(3, ct, 64);                                                           \
            amx_emit(a, o + 16, g + 1, ct);                                                    \
        }                                                                                      \
    } while (0)

/* One activation row (decode): B is that row's bfloat16 pairs as they are, one column of 16
 * pairs a tile (``xp`` is ``xb``: no packing, no zeroed columns), and the sums a 16 x 1 tile;
 * each output's tdpbf16ps are those of the 16-column tiles (AMX sums an output from its own row
 * and column: the same bits, the batch-invariance tests check it). tiles 0-1: sums, 4-5:
 * weights, 6: the activations. */
static void amx_bf16_rows_1(const gemv_args *a, int64_t o0, int64_t o1) {
    amx_configure(4);
    const int64_t K = a->in, kc = K / 32, stride = 2 * K;
    const int64_t ld = a->tiled ? 64 : stride, cstep = a->tiled ? 1024 : 64;
    const char *xb = (const char *)a->xp;
    float ct[32] __attribute__((aligned(64)));
    for (int64_t o = o0; o < o1; o += 32) {
        const int two = o + 32 <= o1;
        const char *w0 = (const char *)a->w + o * stride;
        const char *w1 = a->tiled ? w0 + 1024 * kc : w0 + 16 * stride;
        _tile_zero(0);
        if (two) _tile_zero(1);
        for (int64_t c = 0; c < kc; c++) {
            if (a->tiled) amx_ahead(w0, w1, two, c);
            _tile_loadd(4, w0 + cstep * c, ld);
            if (two) _tile_loadd(5, w1 + cstep * c, ld);
            _tile_loadd(6, xb + 64 * c, 4);
            _tile_dpbf16ps(0, 4, 6);
            if (two) _tile_dpbf16ps(1, 5, 6);
        }
        _tile_stored(0, ct, 4);
        if (two) _tile_stored(1, ct + 16, 4);
        for (int b = 0; b < 1 + two; b++) {
            const int64_t ob = o + 16 * b;
            __m512 v = _mm512_load_ps(ct + 16 * b);
            if (a->bias) v = _mm512_add_ps(v, _mm512_loadu_ps(a->bias + ob));
            if (a->accumulate) v = _mm512_add_ps(_mm512_loadu_ps(a->y + ob), v);
            _mm512_storeu_ps(a->y + ob, v);
        }
    }
    _tile_release();
}

/* Weight rows [o0, o1), whole 16-row blocks, two at a time where there are two. */
static void amx_bf16_rows(const gemv_args *a, int64_t o0, int64_t o1) {
    if (o0 >= o1) return;
    if (a->M == 1) {
        amx_bf16_rows_1(a, o0, o1);
        return;
    }
    amx_configure(64);
    const int64_t K = a->in, kc = K / 32, stride = 2 * K, groups = (a->M + 15) / 16;
    /* a tile's rows: DT_BF16's a row apart, DT_BF16T's 64 bytes apart; its next chunk */
    const int64_t ld = a->tiled ? 64 : stride, cstep = a->tiled ? 1024 : 64;
    float ct[256] __attribute__((aligned(64)));
    for (int64_t o = o0; o < o1; o += 32) {
        const int two = o + 32 <= o1;
        const char *w0 = (const char *)a->w + o * stride; /* a block starts where it did */
        const char *w1 = a->tiled ? w0 + 1024 * kc : w0 + 16 * stride;
        for (int64_t g = 0; g < groups; g += 2) {
            const int both = g + 1 < groups, ahead = a->tiled && g == 0;
            const uint32_t *b0 = a->xp + g * kc * 256;
            if (two && both) AMX_BLOCKS(1, 1);
            else if (two) AMX_BLOCKS(1, 0);
            else if (both) AMX_BLOCKS(0, 1);
            else AMX_BLOCKS(0, 0);
        }
    }
    _tile_release();
}
#else
#define AMX_BF16 0
#endif

/* 0 turns AMX off for this process (``plait_amx``: benches and tests compare the two). */
static int amx_wanted = 1;

/* Whether the product ``a`` runs by AMX (``amx_bf16_rows``). */
static int amx_product(const gemv_args *a) {
#if AMX_BF16
    return a->dtype == DT_BF16 && a->in % 32 == 0 && (amx_wanted || a->tiled) && amx_granted();
#else
    (void)a;
    return 0;
#endif
}

/* One activation row (decode): a format's 1 x 1 tile over rows [o0, o1) by direct calls in one
 * loop, which the compiler inlines, rather than one call through ``tiles`` a row (the call and
 * the tile's set-up were ~15% of a bfloat16 row's time from L2: 576 inputs, one thread, 66 ->
 * 78 GB/s, float32 70 -> 77; from memory 30.0 -> 31.8 and 32.5 -> 33.3). The same kernels:
 * the same bits. */
#define ROWS_1(TILE)                                                                           \
    for (int64_t o = o0; o < o1; o++) TILE(a, o, 0, (const char *)a->w + o * row)
static void nt_rows_1(const gemv_args *a, int64_t o0, int64_t o1, int64_t row) {
    switch (a->dtype) {
    case DT_F32: ROWS_1(nt_f32_1x1); return;
#if BF16_DOT
    case DT_BF16: ROWS_1(nt_bf16d_1x1); return;
    case DT_I8: ROWS_1(nt_i8d_1x1); return;
#else
    case DT_BF16: ROWS_1(nt_bf16_1x1); return;
    case DT_I8: ROWS_1(nt_i8_1x1); return;
#endif
    default: ROWS_1(nt_i4_1); return; /* DT_I4 (the packed formats are ``ntp_rows``') */
    }
}

static void nt_rows(const gemv_args *a, int64_t o0, int64_t o1, void *conv) {
    const int64_t row = a->in * weight_eighths[a->dtype] / 8;
#if AMX_BF16
    if (a->xp) { /* whole 16-row blocks by AMX; the rows past the product's last block below */
        const int64_t ob = o0 + (o1 - o0) / 16 * 16;
        amx_bf16_rows(a, o0, ob);
        o0 = ob;
        if (o0 == o1) return;
    }
#endif
    if (a->M == 1) { /* (``conv`` is given to batches only) */
        nt_rows_1(a, o0, o1, row);
        return;
    }
    const int ro = a->M >= tile_min_rows(a->dtype) && a->dtype != DT_I4 ? TILE_RO : 1;
    const int nb = a->dtype == DT_I4 ? 4 : TILE_NB; /* the int4 kernels' widest is 4 rows */
    const nt_kernel *k = tiles[a->dtype][ro > 1], *k1 = tiles[a->dtype][0];
    int64_t o = o0;
    for (; o + ro <= o1; o += ro) {
        const void *wr = (const char *)a->w + o * row;
        const nt_kernel *kk = k;
        if (conv) { /* (given only for batches of blocks: ro is TILE_RO) */
#if BF16_DOT /* (AVX-512: TILE_RO is 4) */
            for (int r = 0; r < 4; r++)
                i8_to_bf16((const int8_t *)wr + r * a->in, a->scale + (o + r) * (a->in / 32),
                           (uint16_t *)conv + r * a->in, a->in);
            kk = tiles[DT_BF16][1];
#else
            widen_rows(a, o, wr, (float *)conv);
            kk = tiles[DT_F32][1];
#endif
            wr = conv;
        }
        int m = 0;
        for (; m + nb <= a->M; m += nb) kk[2](a, o, m, wr);
        for (; m + 2 <= a->M; m += 2) kk[1](a, o, m, wr);
        for (; m < a->M; m++) kk[0](a, o, m, wr);
    }
    for (; o < o1; o++) {
        const void *wr = (const char *)a->w + o * row;
        int m = 0;
        for (; m + nb <= a->M; m += nb) k1[2](a, o, m, wr);
        for (; m + 2 <= a->M; m += 2) k1[1](a, o, m, wr);
        for (; m < a->M; m++) k1[0](a, o, m, wr);
    }
}

/* Output rows a product's threads claim at a time: a multiple of GEMV_ROWS (whole 16-row
 * groups of the packed formats, whole TILE_RO tiles) holding about GEMV_CHUNK_BYTES of
 * weights, so a claim's atomic and call stay small beside its reads (48 int4 rows of 576
 * inputs are 14 KB, ~0.5 us at the read bound), but no more than a quarter of a thread's
 * share, so the last claims even out the threads. */
#define GEMV_ROWS (16 * TILE_RO)
#define GEMV_CHUNK_BYTES (64 << 10)

static int64_t gemv_chunk(const gemv_args *a, int nth) {
    const int64_t row = a->in * weight_eighths[a->dtype] / 8;
    int64_t rows = row > 0 && row < GEMV_CHUNK_BYTES ? GEMV_CHUNK_BYTES / row : 1;
    const int64_t spread = a->out / (4 * (int64_t)(nth > 1 ? nth : 1)); /* ~4 claims a thread */
    if (spread < rows) rows = spread; /* (an int4 576 x 576 product is 166 KB: 3 chunks) */
    if (rows < 1) rows = 1;
    return (rows + GEMV_ROWS - 1) / GEMV_ROWS * GEMV_ROWS; /* at least GEMV_ROWS */
}

/* One thread's ``conv``: TILE_RO rows, bfloat16 with AVX512_BF16, float32 without; whole
 * cache lines. */
INLINE size_t conv_bytes(const gemv_args *a) {
    const size_t n = (size_t)TILE_RO * (size_t)a->in * (BF16_DOT ? 2 : 4);
    return (n + 63) & ~(size_t)63;
}

static void gemv_rows(void *p, int tid, int64_t lo, int64_t hi) {
    const gemv_args *a = (const gemv_args *)p;
#if PACKED_DOT
    if (is_packed(a->dtype)) {
        ntp_rows(a, lo, hi);
        return;
    }
#endif
    nt_rows(a, lo, hi, a->conv ? (char *)a->conv + tid * conv_bytes(a) : NULL);
}

/* float32 -> bfloat16, round to nearest even: 32 at a time by the CPU's own conversion
 * (was a scalar loop: ~10 ms of a 32-row bfloat16 step). */
static void to_bf16(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
#if BF16_DOT
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512(dst + i, (__m512i)v);
    }
#endif
    for (; i < n; i++) dst[i] = f32_to_bf16(src[i]);
}

/* DT_I8P's activations: int16 per 32-element block, the block's largest magnitude at this */
#define I8P_X_TOP 32767.0f

/* The activations a product reads in its kernel's form (``gemv``), in one buffer kept from call
 * to call: every caller of ``gemv`` holds the pool's step lock, so one buffer serves them all.
 * It grows to the largest product's need and is never freed (each product of a step took a
 * malloc and a free). Returns NULL where it could not grow. */
static struct {
    char *p;
    size_t n;
} scratch;
static void *scratch_bytes(size_t n) {
    if (n > scratch.n) {
        free(scratch.p);
        n = (n + 4095) & ~(size_t)4095;
        scratch.p = (char *)aligned_alloc(64, n);
        scratch.n = scratch.p ? n : 0;
    }
    return scratch.p;
}

/* Returns -1 when a buffer found no memory, -2 for DT_I8P / DT_I4P / DT_I4PH where not built
 * (neither AVX512_VNNI nor AVX2) or rows not whole groups of 16, and for DT_BF16T where AMX is
 * not built or granted. */
static int gemv(gemv_args *a, int nth) {
    const int amx = amx_product(a);
    if (a->tiled && !amx) return -2; /* DT_BF16T only AMX reads */
    if (is_packed(a->dtype)) {
#if PACKED_DOT
        if (a->out % 16) return -2;
        const int64_t nblk = a->M * a->in / 32;
        int16_t *q = (int16_t *)scratch_bytes(2 * (size_t)(a->M * a->in) + 8 * (size_t)nblk + 64);
        if (!q) return -1;
        float *xs = (float *)(q + a->M * a->in), *xz = xs + nblk;
        if (is_i8p(a->dtype)) {
            quantize_x(a->x, nblk, I8P_X_TOP, q, NULL, NULL, xs, xz);
            a->xq = q;
        } else { /* int4: the int16 buffer holds xh then xl */
            int8_t *xh = (int8_t *)q, *xl = xh + a->M * a->in;
            quantize_x(a->x, nblk, 8191.0f, NULL, xh, xl, xs, xz);
            a->xh = xh;
            a->xl = xl;
        }
        a->xs = xs;
        a->xsum = xz;
        parallel_claim(gemv_rows, a, a->out, gemv_chunk(a, nth), nth);
        return 0;
#else
        return -2;
#endif
    }
    const int64_t G = a->dtype == DT_I4 && !I4_TABLE ? a->in / 32 : 0;
    const int64_t nxb = (a->dtype == DT_BF16 || a->dtype == DT_I8) && BF16_DOT ? a->M * a->in : 0;
#if BF16_DOT
    const int convert = a->dtype == DT_I8 && a->M > 4;
#else
    const int convert = (a->dtype == DT_BF16 || a->dtype == DT_I8) && a->M >= TILE_MIN_ROWS;
#endif
    /* AMX's B tiles: whole groups of 16 rows (one row: ``xb`` itself) */
    const size_t xp_bytes = amx && a->M > 1 ? 2 * (size_t)((a->M + 15) / 16 * 16) * a->in : 0;
    /* one buffer: xsum [M, G] floats, xb (bfloat16), xp and conv each on a cache line */
    const size_t xsum_bytes = sizeof(float) * (size_t)(a->M * G);
    const size_t xp_at = (xsum_bytes + 2 * (size_t)nxb + 63) & ~(size_t)63;
    const size_t conv_at = xp_at + xp_bytes;
    char *buf = (char *)scratch_bytes(conv_at + (convert ? (size_t)nth * conv_bytes(a) : 0) + 64);
    if (!buf) return -1;
    if (G) {
        float *xsum = (float *)buf;
        for (int m = 0; m < a->M; m++)
            for (int64_t g = 0; g < G; g++) {
                const float *x = a->x + (int64_t)m * a->in + 32 * g;
                f32x16 v = load_f32(x) + load_f32(x + 16);
                xsum[m * G + g] = hsum(v);
            }
        a->xsum = xsum;
    }
    uint16_t *xb = (uint16_t *)(buf + xsum_bytes);
    if (nxb) {
        to_bf16(a->x, xb, nxb);
        a->xb = xb;
    }
#if AMX_BF16
    if (xp_bytes) {
        amx_pack(xb, a->M, a->in, (uint32_t *)(buf + xp_at));
        a->xp = (const uint32_t *)(buf + xp_at);
    } else if (amx) {
        a->xp = (const uint32_t *)xb; /* one row: its pairs are B's one column */
    }
#endif
    a->conv = convert ? (void *)(((uintptr_t)(buf + conv_at) + 63) & ~(uintptr_t)63) : NULL;
    parallel_claim(gemv_rows, a, a->out, gemv_chunk(a, nth), nth);
    return 0;
}

/* ---- the model ---------------------------------------------------------------------------- */

/* cfg[]: the model's shape (CFG_*; CFG_TABLE_DTYPE: the embedding's and RoPE tables' dtype;
 * CFG_SCREEN_MAX: the most candidates a row keeps through the head's screen).
 * ptrs[] (P_*) and each layer's row of layer_ptrs[] (L_*): addresses; a matrix takes 4
 * entries (MAT_*): its weight, its DT_* format, its scales and its lows (0 if none). Norm
 * weights and biases are float32. */
enum {
    CFG_LAYERS, CFG_HIDDEN, CFG_HEADS, CFG_KV_HEADS, CFG_HEAD_DIM, CFG_INTER, CFG_VOCAB,
    CFG_TABLE_DTYPE, CFG_KVDTYPE, CFG_SCREEN_MAX,
    CFG_COUNT
};
enum { MAT_W, MAT_DTYPE, MAT_SCALE, MAT_LOW, MAT_COUNT };
/* P_SCREEN: the head's int8 screen (a DT_I8PH matrix; its weight 0 where there is none) and
 * its rows' bounds, float32 [vocab] each (``screened_head``) */
enum {
    P_EMBED, P_FINAL_NORM, P_COS, P_SIN, P_LM_HEAD,
    P_SCREEN = P_LM_HEAD + MAT_COUNT, P_SCREEN_ERR = P_SCREEN + MAT_COUNT, P_SCREEN_L1,
    P_COUNT
};
enum {
    L_ATTN_NORM, L_QKV_BIAS, L_MLP_NORM, L_K, L_V,
    L_QKV, L_O = L_QKV + MAT_COUNT, L_GATE_UP = L_O + MAT_COUNT, L_DOWN = L_GATE_UP + MAT_COUNT,
    L_COUNT = L_DOWN + MAT_COUNT
};

/* A matrix's format as the kernels read it: DT_BF16T is DT_BF16 (the same bytes a row), its
 * layout ``gemv_args.tiled``. */
INLINE int mat_dtype(const int64_t *mat) {
    const int dt = (int)mat[MAT_DTYPE];
    return dt == DT_BF16T ? DT_BF16 : dt;
}

static gemv_args product(const int64_t *mat, int64_t in, int64_t out, const float *x,
                         const float *bias, float *y, int accumulate, int M) {
    gemv_args a = {.w = (const void *)mat[MAT_W], .dtype = mat_dtype(mat),
                   .scale = (const float *)mat[MAT_SCALE], .low = (const float *)mat[MAT_LOW],
                   .in = in, .out = out, .x = x, .bias = bias, .y = y, .ldy = out,
                   .accumulate = accumulate, .M = M, .tiled = mat[MAT_DTYPE] == DT_BF16T};
    return a;
}

typedef struct {
    int M, Hq, Hkv, D;
    int kvdt;
    const float *qkv; /* [M, (Hq + 2 Hkv) D], q and k rotated */
    float *out;       /* [M, Hq D] */
    const void *kc, *vc;
    const int64_t *slots; /* req_to_token */
    int64_t stride;
    const int64_t *rows, *seq_lens;
    float *scores;        /* [nth][score_floats]: a unit's G x chunk_len scores */
    int64_t score_floats; /* G x chunk_len(the longest row) */
    float scale;
    const int64_t *unit0; /* [M + 1]: row m's first unit; unit0[M] units in all */
    float *part;          /* [M, Hq, ATTN_CHUNKS_MAX, D + 2]: chunks' outputs, max, sum */
    atomic_int *done;     /* [M, Hkv]: chunks finished */
    int64_t q_ld;         /* floats from one row's q to the next's (the step's qkv: QKV) */
} attn_args;

/* The unit a thread takes after this one (its share's next, ``attn_units``): a unit's first
 * pass over its keys (one head's q . k) is bound by memory where the KV is not in a cache,
 * and its other passes (the group's other heads, softmax, p . v) by instructions, so each
 * unit asks for the next unit's K during its second head's q . k (its one head's, in a group
 * of one; AVX2 builds: its q . k, which reads a key block's heads together) and for its V
 * during p . v,
 * a key at a time, into L2: where the KV comes from memory, reading and computing had taken
 * turns (one thread over 4,000 positions in 30 layers, 88 cycles a key and KV head against 42
 * with the KV in L2; this prefetch alone 8.9 -> 6.5 ms a token, two threads 4.9 -> 3.8, 32
 * rows of 300 positions 13.3 -> 10.2 ms; bench/RESULTS.md). ``slot`` NULL: none. */
typedef struct {
    const int64_t *slot; /* the next unit's keys' slots */
    int64_t n;           /* its keys */
    int64_t kvo;         /* its KV head's first element in a slot's row */
} attn_next;

/* Asks for the rows of keys [lo, hi) of ``slot`` in ``cache`` (K or V), KV head offset
 * ``kvo``, into L1 (``l1``) or L2. */
INLINE void prefetch_rows(const attn_args *a, const void *cache, const int64_t *slot, int64_t kvo,
                          int64_t lo, int64_t hi, const int D, const int bf, const int l1) {
    const int64_t HD = (int64_t)a->Hkv * D, eb = bf ? 2 : 4, row = D * eb;
    for (int64_t j = lo; j < hi; j++) {
        const char *p = (const char *)cache + (slot[j] * HD + kvo) * eb;
        for (int64_t o = 0; o < row; o += 64) {
            if (l1) __builtin_prefetch(p + o, 0, 3);
            else __builtin_prefetch(p + o, 0, 2);
        }
    }
}

/* Asks for the rows of the next unit's keys [lo, hi) of ``cache`` (K or V) into L2. */
INLINE void prefetch_next(const attn_args *a, const attn_next *nx, const void *cache, int64_t lo,
                          int64_t hi, const int D, const int bf) {
    if (nx->slot) prefetch_rows(a, cache, nx->slot, nx->kvo, lo, hi < nx->n ? hi : nx->n, D, bf, 0);
}

/* The attention of one unit is written with D (head_dim) and the KV dtype as arguments of
 * always-inline functions, called with constants for the common shapes (below): with them
 * known, the loops over D unroll and a unit's outputs stay in registers. */

/* q . k for one query head and one cached key (``off``: the key's first element), as 16
 * lanes for ``hsum``: bfloat16 keys through AVX512_BF16 dot products against the query rounded
 * to bfloat16 (``qb``), as torch's bfloat16 attention takes it; else the keys widened and FMAs
 * against the float32 query. (The query in two bfloat16 parts, hi + lo, doubled the products
 * and was no closer to float32: SmolLM2 bfloat16, 16 prompts x 64 greedy tokens, the mean
 * |logprob - float32's| before the first divergence 0.0099 with two parts, 0.0090 with one;
 * bench/RESULTS.md.) */
INLINE void qk_parts(const attn_args *a, const float *q, const uint16_t *qb, int64_t off,
                     const int D, const int bf, vfw *acc) {
    for (int h = 0; h < VPARTS; h++) acc[h] = (vfw){0};
    if (bf) {
        const uint16_t *k = (const uint16_t *)a->kc + off;
#if BF16_DOT
        if (D % 32 == 0) {
            __m512 d2 = _mm512_setzero_ps();
            for (int d = 0; d < D; d += 32)
                d2 = _mm512_dpbf16_ps(d2, (__m512bh)_mm512_loadu_si512(qb + d),
                                      (__m512bh)_mm512_loadu_si512(k + d));
            memcpy(acc, &d2, 64);
            return;
        }
#endif
        (void)qb;
        for (int d = 0; d < D; d += 16)
            for (int h = 0; h < VPARTS; h++)
                acc[h] += load_vw(q + d + VW * h) * load_bf16_vw(k + d + VW * h);
    } else {
        const float *k = (const float *)a->kc + off;
        for (int d = 0; d < D; d += 16)
            for (int h = 0; h < VPARTS; h++)
                acc[h] += load_vw(q + d + VW * h) * load_vw(k + d + VW * h);
    }
}

/* sc[s] = (q . k_s) * scale for s in [0, S); with AVX-512 16 keys at a time summed by
 * ``hsum16`` (each lane in ``hsum``'s order, so a score has the same bits in a block or in the
 * tail). ``pf`` (a group's first head): asks for the K rows ATTN_KEYS_AHEAD keys ahead and for
 * the V rows of the keys it reads. A unit reads a third of each slot's row (one KV head of
 * SmolLM2's 3), keys 384 bytes apart, which the hardware's prefetchers left to wait on memory:
 * one row at 1,000 positions, 30 layers, bfloat16, KV in L3 1.68-1.83 -> 1.42-1.48 ms a token
 * (1.4 -> 1.1 ms of it attention); in the decode step, where the weights stream between the
 * layers, 2-3% of the step at 1,000 and 3,000 positions (bench/RESULTS.md). */
#define ATTN_KEYS_AHEAD 32
INLINE void qk_scores(const attn_args *a, const float *q, const uint16_t *qb,
                      const int64_t *slot, int64_t S, int kvh, float *sc, const int D,
                      const int bf, const int pf, const attn_next *nx) {
    const int64_t HD = (int64_t)a->Hkv * D, kvo = (int64_t)kvh * D;
    int64_t s = 0;
    (void)pf; /* (AVX2 builds read a key block's heads together: qk_scores_heads) */
#if VW == 16
    for (; s + 16 <= S; s += 16) {
        f32x16 acc[16];
        if (pf) { /* (the group's first head: the others find K in L1) */
            const int64_t ahead = s + ATTN_KEYS_AHEAD, end = ahead + 16 < S ? ahead + 16 : S;
            prefetch_rows(a, a->kc, slot, kvo, ahead, end, D, bf, 1);
            prefetch_rows(a, a->vc, slot, kvo, s, s + 16, D, bf, 0); /* V for p . v */
        }
        if (nx) prefetch_next(a, nx, a->kc, s, s + 16, D, bf);
        for (int j = 0; j < 16; j++) qk_parts(a, q, qb, slot[s + j] * HD + kvo, D, bf, &acc[j]);
        f32x16 v = hsum16(acc); /* lane 4k + i: key 4i + k */
        v = __builtin_shufflevector(v, v, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        store_f32(sc + s, v * splat(a->scale));
    }
#endif
    if (nx) prefetch_next(a, nx, a->kc, s, nx->n, D, bf); /* (past S: the next may be longer) */
    for (; s < S; s++) {
        vfw acc[VPARTS];
        qk_parts(a, q, qb, slot[s] * HD + kvo, D, bf, acc);
        sc[s] = hsum_parts(acc) * a->scale;
    }
}

#if VW == 8
/* ``qk_scores`` for the G query heads of KV head kvh (q: G rows D apart; sc: G rows ``ld``
 * apart), with 8 lanes (no AVX512_BF16 there: keys are widened to float32): each K row is
 * loaded once for up to 8 heads, and each head's sums are ``qk_parts``' in its order, 8 keys'
 * totals at once by ``hsum8x8`` (a tail key by ``hsum8``): the same bits as head by head. */
INLINE void qk_scores_heads(const attn_args *a, const float *q, const int64_t *slot, int64_t S,
                            int kvh, float *sc, int64_t ld, int G, const int D, const int bf,
                            const attn_next *nx) {
    const int DV = D / VW;
    const int64_t HD = (int64_t)a->Hkv * D, kvo = (int64_t)kvh * D;
    const vfw scale = vsplat(a->scale);
    for (int g0 = 0; g0 < G; g0 += 8) {
        const int ng = G - g0 < 8 ? G - g0 : 8;
        for (int64_t s = 0; s < S; s += 8) {
            const int keys = S - s < 8 ? (int)(S - s) : 8;
            if (g0 == 0) prefetch_next(a, nx, a->kc, s, s + 8 < S ? s + 8 : nx->n, D, bf);
            f32x8 v[8][8]; /* [head][key] */
            for (int j = 0; j < keys; j++) {
                const int64_t off = slot[s + j] * HD + kvo;
                vfw k[256 / VW];
                for (int d = 0; d < DV; d++)
                    k[d] = bf ? load_bf16_vw((const uint16_t *)a->kc + off + VW * d)
                              : load_vw((const float *)a->kc + off + VW * d);
                for (int g = 0; g < ng; g++) {
                    const float *qg = q + (int64_t)(g0 + g) * D;
                    vfw acc0 = (vfw){0}, acc1 = (vfw){0};
                    for (int d = 0; d < DV; d += 2) {
                        acc0 += load_vw(qg + VW * d) * k[d];
                        acc1 += load_vw(qg + VW * (d + 1)) * k[d + 1];
                    }
                    v[g][j] = acc0 + acc1; /* hsum_parts' first step */
                }
            }
            for (int g = 0; g < ng; g++) {
                float *row = sc + (g0 + g) * ld + s;
                if (keys == 8) {
                    store_vw(row, hsum8x8(v[g]) * scale);
                } else {
                    for (int j = 0; j < keys; j++) row[j] = hsum8(v[g][j]) * a->scale;
                }
            }
        }
    }
}
#endif

/* Softmax's numerators in place over sc[0, S), exp(sc[s] - max); returns their sum (lane by
 * lane over 16-key blocks, then the lanes by ``hsum_parts`` and the tail keys in order: a
 * running scalar sum of each block's ``hsum`` made the pass a chain of horizontal adds) and
 * sets ``*max_out`` to the max. With ``wb``, also the numerators rounded to bfloat16 into
 * wb[0, S), and wb[S] = 0 (p . v by pairs of keys: ``pv_heads_dp``); wb may be sc's own
 * memory (each block is read before its half-width copy is written). */
static float softmax_weights(float *sc, int64_t S, float *max_out, uint16_t *wb) {
    float mx = -INFINITY; /* (a max is the same in any order) */
    int64_t s = 0;
    if (S >= VW) {
        vfw m = load_vw(sc);
        for (; s + VW <= S; s += VW) {
            const vfw v = load_vw(sc + s);
            m = vselect(v > m, v, m);
        }
        for (int i = 0; i < VW; i++) mx = m[i] > mx ? m[i] : mx;
    }
    for (; s < S; s++) mx = sc[s] > mx ? sc[s] : mx;
    *max_out = mx;
    vfw acc[VPARTS];
    for (int h = 0; h < VPARTS; h++) acc[h] = (vfw){0};
    s = 0;
    for (; s + 16 <= S; s += 16) {
        vfw e[VPARTS];
        for (int h = 0; h < VPARTS; h++) {
            e[h] = vexp(load_vw(sc + s + VW * h) - vsplat(mx));
            acc[h] += e[h];
        }
#if BF16_DOT
        if (wb) {
            const __m256bh b = _mm512_cvtneps_pbh((__m512)e[0]);
            memcpy(wb + s, &b, 32);
            continue;
        }
#endif
        for (int h = 0; h < VPARTS; h++) store_vw(sc + s + VW * h, e[h]);
    }
    float sum = hsum_parts(acc);
    for (; s < S; s++) {
        const float e = sexp(sc[s] - mx);
        sum += e;
        if (wb) {
            const uint16_t b = f32_to_bf16(e);
            memcpy(wb + s, &b, 2);
        } else {
            sc[s] = e;
        }
    }
    if (wb) memset(wb + S, 0, 2);
    return sum;
}

/* The largest divisor of DV (vectors of a head) of at most 16 / NH with AVX-512's 32 vector
 * registers, 8 / NH with AVX2's 16: a constant where DV and NH are, so that a block's sums are
 * registers, not an array in memory. (With 8 / NH on AVX-512 a SmolLM2 group, 3 heads of 64,
 * read its V rows in two passes of half a row: the int4 step at 1000 words of context took
 * 4,263 / 4,587 us of C against 4,012 / 4,378 in one pass, min / median of 8 alternated.) */
INLINE int pv_block(const int DV, const int NH) {
    const int regs = VW == 16 ? 16 : 8;
    int b = regs / NH < DV ? regs / NH : DV;
    while (DV % b) b--;
    return b;
}

/* dst[h] = sum_s w[h][s] v_s * (1 / sums[h]) for NH heads of one KV head at once (w: rows
 * ``ld`` apart), each V row read once for them. Dimensions go in blocks of at most 8 / NH
 * vectors, so that NH heads' sums stay in registers (16 with AVX2); each output element's sum
 * still runs over s in order, so its bits do not depend on NH or the blocks. */
INLINE void pv_heads(const attn_args *a, const int64_t *slot, int64_t S, int kvh, const float *w,
                     int64_t ld, const float *sums, float *dst, int64_t dst_ld, const int NH,
                     const int D, const int bf, const attn_next *nx) {
    const int64_t HD = (int64_t)a->Hkv * D, kvo = (int64_t)kvh * D;
    const int DV = D / VW, DB = pv_block(DV, NH);
    for (int d0 = 0; d0 < DV; d0 += DB) {
        vfw o[4][16]; /* NH <= 4, DB <= 16 / NH */
        for (int h = 0; h < NH; h++)
            for (int d = 0; d < DB; d++) o[h][d] = (vfw){0};
        for (int64_t s = 0; s < S; s++) {
            if (nx && d0 == 0) prefetch_next(a, nx, a->vc, s, s + 1 < S ? s + 1 : nx->n, D, bf);
            const int64_t off = slot[s] * HD + kvo + (int64_t)VW * d0;
            vfw p[4];
            for (int h = 0; h < NH; h++) p[h] = vsplat(w[h * ld + s]);
            for (int d = 0; d < DB; d++) {
                vfw v = bf ? load_bf16_vw((const uint16_t *)a->vc + off + VW * d)
                           : load_vw((const float *)a->vc + off + VW * d);
                for (int h = 0; h < NH; h++) o[h][d] += p[h] * v;
            }
        }
        for (int h = 0; h < NH; h++) {
            vfw inv = vsplat(1.0f / sums[h]);
            for (int d = 0; d < DB; d++)
                store_vw(dst + (int64_t)h * dst_ld + VW * (d0 + d), o[h][d] * inv);
        }
    }
}

#if BF16_DOT
/* ``pv_heads`` for bfloat16 V (D a multiple of 32) by AVX512_BF16 dot products: the V rows
 * of keys s and s + 1 interleaved (``vpunpck[lh]wd``), so that lane i of ``vdpbf16ps`` adds
 * w_s v_s[d] + w_s+1 v_s+1[d] for one dimension d, with the pair of weights (bfloat16, ``wb``:
 * rows ``wld`` apart, wb[S] = 0 past an odd S) broadcast: half the instructions of widening V
 * for float32 FMAs, the weights rounded to bfloat16 as torch's bfloat16 attention rounds them
 * for its p . v product. Each output's sum runs over the pairs in order; lanes come out by
 * 128-bit lane (dimensions 0-3, 8-11, ... in the low half's dot products, 4-7, 12-15, ... in
 * the high half's), put back in order at the store. */
INLINE void pv_heads_dp(const attn_args *a, const int64_t *slot, int64_t S, int kvh,
                        const uint16_t *wb, int64_t wld, const float *sums, float *dst,
                        int64_t dst_ld, const int NH, const int D, const attn_next *nx) {
    const int64_t HD = (int64_t)a->Hkv * D, kvo = (int64_t)kvh * D;
    const uint16_t *vc = (const uint16_t *)a->vc;
    const __m512i lo_idx = _mm512_set_epi32(23, 22, 21, 20, 7, 6, 5, 4, 19, 18, 17, 16, 3, 2, 1, 0),
                  hi_idx = _mm512_set_epi32(31, 30, 29, 28, 15, 14, 13, 12, 27, 26, 25, 24, 11, 10, 9, 8);
    for (int d0 = 0; d0 < D; d0 += 64) {
        const int DB = D - d0 >= 64 ? 2 : 1; /* 32 dimensions a vector */
        __m512 o[4][4];                      /* [head][low / high half of each vector] */
        for (int h = 0; h < NH; h++)
            for (int k = 0; k < 2 * DB; k++) o[h][k] = _mm512_setzero_ps();
        for (int64_t s = 0; s < S; s += 2) {
            if (nx && d0 == 0) prefetch_next(a, nx, a->vc, s, s + 2 < S ? s + 2 : nx->n, D, 1);
            const uint16_t *v0 = vc + slot[s] * HD + kvo + d0;
            const uint16_t *v1 = s + 1 < S ? vc + slot[s + 1] * HD + kvo + d0 : NULL;
            __m512bh pr[4];
            for (int b = 0; b < DB; b++) {
                const __m512i x = _mm512_loadu_si512(v0 + 32 * b),
                              y = v1 ? _mm512_loadu_si512(v1 + 32 * b) : _mm512_setzero_si512();
                pr[2 * b] = (__m512bh)_mm512_unpacklo_epi16(x, y);
                pr[2 * b + 1] = (__m512bh)_mm512_unpackhi_epi16(x, y);
            }
            for (int h = 0; h < NH; h++) {
                int32_t pair;
                memcpy(&pair, wb + h * wld + s, 4);
                const __m512bh w = (__m512bh)_mm512_set1_epi32(pair);
                for (int k = 0; k < 2 * DB; k++) o[h][k] = _mm512_dpbf16_ps(o[h][k], w, pr[k]);
            }
        }
        for (int h = 0; h < NH; h++) {
            const __m512 inv = _mm512_set1_ps(1.0f / sums[h]);
            float *out = dst + (int64_t)h * dst_ld + d0;
            for (int b = 0; b < DB; b++) {
                const __m512 l = o[h][2 * b], u = o[h][2 * b + 1];
                _mm512_storeu_ps(out + 32 * b, _mm512_permutex2var_ps(l, lo_idx, u) * inv);
                _mm512_storeu_ps(out + 32 * b + 16, _mm512_permutex2var_ps(l, hi_idx, u) * inv);
            }
        }
    }
}
#endif

/* p . v for NH heads of a unit's group (weights ``w``: their rows ``C`` floats apart, or with
 * ``dp`` their bfloat16 copies ``softmax_weights`` wrote over them): ``pv_heads_dp`` where the
 * build and V have it, else ``pv_heads``. */
INLINE void pv_group(const attn_args *a, const int64_t *slot, int64_t S, int kvh, const float *w,
                     int64_t C, const float *sums, float *dst, int64_t dst_ld, const int NH,
                     const int D, const int bf, const int dp, const attn_next *nx) {
#if BF16_DOT
    if (dp) {
        pv_heads_dp(a, slot, S, kvh, (const uint16_t *)w, 2 * C, sums, dst, dst_ld, NH, D, nx);
        return;
    }
#endif
    (void)dp;
    pv_heads(a, slot, S, kvh, w, C, sums, dst, dst_ld, NH, D, bf, nx);
}

/* Attention is split by chunks of positions (flash-decoding's split of the keys): a unit is
 * (row m, KV head, chunk) with all the query heads of the KV head's group, so K and V are
 * read once per group, and a long context spreads over the threads even for one row. A
 * row's chunk length is a function of its length S alone (``chunk_len``), never of the batch
 * or the thread count, and every sum runs in the same order whatever thread computes it: a
 * row's bits depend on neither. A row of one chunk writes its output normalised, as plain
 * softmax attention; a row of several leaves each chunk's unnormalised output, max and sum,
 * and the unit that completes a (row, KV head) merges its chunks in chunk order. */
#define ATTN_CHUNK_MIN 128
#define ATTN_CHUNKS_MAX 16
INLINE int64_t chunk_len(int64_t S) {
    int64_t c = (S + ATTN_CHUNKS_MAX - 1) / ATTN_CHUNKS_MAX;
    c = (c + 15) & ~(int64_t)15;
    return c < ATTN_CHUNK_MIN ? ATTN_CHUNK_MIN : c;
}
INLINE int64_t chunk_count(int64_t S) {
    const int64_t c = chunk_len(S);
    return S < 1 ? 1 : (S + c - 1) / c;
}

/* The partial results of (row m, query head h, chunk c): D outputs, then the max and the sum. */
INLINE float *attn_part(const attn_args *a, int m, int h, int64_t c) {
    return a->part + (((int64_t)m * a->Hq + h) * ATTN_CHUNKS_MAX + c) * (a->D + 2);
}

/* out = sum_c o_c e^(max_c - max) / sum_c l_c e^(max_c - max), chunks in order. */
static void attn_merge(const attn_args *a, int m, int h, int64_t nch) {
    const int D = a->D;
    float mx = -INFINITY, sum = 0.0f, scale[ATTN_CHUNKS_MAX];
    for (int64_t c = 0; c < nch; c++) {
        const float cm = attn_part(a, m, h, c)[D];
        mx = cm > mx ? cm : mx;
    }
    for (int64_t c = 0; c < nch; c++) {
        const float *p = attn_part(a, m, h, c);
        scale[c] = sexp(p[D] - mx);
        sum += p[D + 1] * scale[c];
    }
    float *out = a->out + (int64_t)m * a->Hq * D + (int64_t)h * D;
    const vfw inv = vsplat(1.0f / sum);
    for (int d = 0; d < D; d += VW) {
        vfw acc = (vfw){0};
        for (int64_t c = 0; c < nch; c++)
            acc += load_vw(attn_part(a, m, h, c) + d) * vsplat(scale[c]);
        store_vw(out + d, acc * inv);
    }
}

/* One unit: row m, KV head kvh, chunk c, its G query heads. ``sc``: G x chunk_len scores.
 * ``nx``: the unit the thread takes next, whose K and V it asks for (``attn_next``). */
INLINE void attn_unit_d(const attn_args *a, int m, int kvh, int64_t c, float *sc, const int D,
                        const int bf, const attn_next *nx) {
    const int Hq = a->Hq, G = Hq / a->Hkv, h0 = kvh * G;
    const int64_t qkv_w = a->q_ld;
    const int64_t S = a->seq_lens[m], C = chunk_len(S), nch = chunk_count(S), s0 = c * C;
    const int64_t n = S - s0 < C ? S - s0 : C;
    const int64_t *slot = a->slots + a->rows[m] * a->stride + s0;
    float sums[256], maxes[256];
#if VW == 8
    qk_scores_heads(a, a->qkv + m * qkv_w + (int64_t)h0 * D, slot, n, kvh, sc, C, G, D, bf, nx);
#else
    uint16_t qb[256]; /* the query rounded to bfloat16 */
    for (int g = 0; g < G; g++) {
        const float *q = a->qkv + m * qkv_w + (int64_t)(h0 + g) * D;
        if (bf) to_bf16(q, qb, D);
        /* the first head reads K from memory; the second asks for the next unit's */
        qk_scores(a, q, qb, slot, n, kvh, sc + g * C, D, bf, g == 0, g == (G > 1) ? nx : NULL);
    }
#endif
#if BF16_DOT
    const int dp = bf && D % 32 == 0; /* p . v by pairs of keys (``pv_heads_dp``) */
#else
    const int dp = 0;
#endif
    for (int g = 0; g < G; g++)
        sums[g] = softmax_weights(sc + g * C, n, &maxes[g], dp ? (uint16_t *)(sc + g * C) : NULL);
    float *dst;
    int64_t dst_ld;
    if (nch == 1) { /* normalised, straight to the output */
        dst = a->out + (int64_t)m * Hq * D + (int64_t)h0 * D;
        dst_ld = D;
    } else {
        dst = attn_part(a, m, h0, c);
        dst_ld = (int64_t)ATTN_CHUNKS_MAX * (D + 2);
        for (int g = 0; g < G; g++) {
            dst[g * dst_ld + D] = maxes[g];
            dst[g * dst_ld + D + 1] = sums[g];
            sums[g] = 1.0f; /* unnormalised: x * (1 / 1) is x */
        }
    }
    for (int g = 0; g < G;) { /* the group's heads four at a time, V read once for them */
        const int nh = G - g < 4 ? G - g : 4;
        const attn_next *pnx = g == 0 ? nx : NULL;
        const float *w = sc + g * C;
        float *o = dst + g * dst_ld;
        switch (nh) {
        case 4: pv_group(a, slot, n, kvh, w, C, sums + g, o, dst_ld, 4, D, bf, dp, pnx); break;
        case 3: pv_group(a, slot, n, kvh, w, C, sums + g, o, dst_ld, 3, D, bf, dp, pnx); break;
        case 2: pv_group(a, slot, n, kvh, w, C, sums + g, o, dst_ld, 2, D, bf, dp, pnx); break;
        default: pv_group(a, slot, n, kvh, w, C, sums + g, o, dst_ld, 1, D, bf, dp, pnx); break;
        }
        g += nh;
    }
    if (nch > 1 &&
        atomic_fetch_add_explicit(&a->done[m * a->Hkv + kvh], 1, memory_order_acq_rel) == nch - 1)
        for (int gg = 0; gg < G; gg++) attn_merge(a, m, h0 + gg, nch);
}

#define ATTN_UNIT(NAME, D)                                                                     \
    static void NAME##_bf(const attn_args *a, int m, int kvh, int64_t c, float *sc,            \
                          const attn_next *nx) {                                               \
        attn_unit_d(a, m, kvh, c, sc, D, 1, nx);                                               \
    }                                                                                          \
    static void NAME##_f32(const attn_args *a, int m, int kvh, int64_t c, float *sc,           \
                           const attn_next *nx) {                                              \
        attn_unit_d(a, m, kvh, c, sc, D, 0, nx);                                               \
    }
ATTN_UNIT(attn_d64, 64)
ATTN_UNIT(attn_d128, 128)
ATTN_UNIT(attn_d256, 256)

/* Any other head_dim (a multiple of 16, at most 256): the order of every sum is the same, the
 * loops are not unrolled. */
static void attn_unit(const attn_args *a, int m, int kvh, int64_t c, float *sc,
                      const attn_next *nx) {
    const int bf = a->kvdt == DT_BF16;
    switch (a->D) {
    case 64: (bf ? attn_d64_bf : attn_d64_f32)(a, m, kvh, c, sc, nx); return;
    case 128: (bf ? attn_d128_bf : attn_d128_f32)(a, m, kvh, c, sc, nx); return;
    case 256: (bf ? attn_d256_bf : attn_d256_f32)(a, m, kvh, c, sc, nx); return;
    default: break;
    }
    attn_unit_d(a, m, kvh, c, sc, a->D, bf, nx);
}

/* Units in order (row, KV head, chunk); row m's first is unit0[m]. A thread claims its own
 * share's units in order before any other's, so unit u + 1 is the one it most likely takes
 * next: u asks for its keys (``attn_next``). */
static void attn_units(void *p, int tid, int64_t lo, int64_t hi) {
    const attn_args *a = (const attn_args *)p;
    float *sc = a->scores + (int64_t)tid * a->score_floats;
    int m = 0;
    while (a->unit0[m + 1] <= lo) m++;
    for (int64_t u = lo; u < hi; u++) {
        while (a->unit0[m + 1] <= u) m++;
        const int64_t nch = chunk_count(a->seq_lens[m]), r = u - a->unit0[m];
        attn_next nx = {NULL, 0, 0};
        if (u + 1 < a->unit0[a->M]) {
            const int mn = a->unit0[m + 1] <= u + 1 ? m + 1 : m;
            const int64_t S = a->seq_lens[mn], C = chunk_len(S), nc = chunk_count(S),
                          rn = u + 1 - a->unit0[mn], s0 = rn % nc * C;
            nx.slot = a->slots + a->rows[mn] * a->stride + s0;
            nx.n = S - s0 < C ? S - s0 : C;
            nx.kvo = rn / nc * a->D;
        }
        attn_unit(a, m, (int)(r / nch), r % nch, sc, &nx);
    }
}

static void attention(attn_args *a, int nth) {
    for (int i = 0; i < a->M * a->Hkv; i++) atomic_store_explicit(&a->done[i], 0, memory_order_relaxed);
    parallel_claim(attn_units, a, a->unit0[a->M], 1, nth);
}

/* The floats ``attention`` works in for M rows whose longest is ``max_seq``, on ``nth``
 * threads: ``scores`` ([nth][*score_floats], a unit's G x chunk_len scores a thread), then
 * ``part`` (each row's chunk partials). */
static int64_t attn_scratch_floats(int M, int Hq, int Hkv, int D, int64_t max_seq, int nth,
                                   int64_t *score_floats) {
    *score_floats = (int64_t)(Hq / Hkv) * chunk_len(max_seq);
    return (int64_t)nth * *score_floats + (int64_t)M * Hq * ATTN_CHUNKS_MAX * (D + 2);
}

/* ``unit0`` [M + 1] of rows of ``seq_lens``: each row's first unit (KV heads x its chunks),
 * then the units in all. */
static void attn_unit0(int64_t *unit0, const int64_t *seq_lens, int M, int Hkv) {
    unit0[0] = 0;
    for (int m = 0; m < M; m++) unit0[m + 1] = unit0[m] + Hkv * chunk_count(seq_lens[m]);
}

typedef struct {
    const float *gu; /* [M, 2 I]: [gate | up] */
    float *act;      /* [M, I] */
    int M;
    int64_t I;
} silu_args;

/* Elements a silu claim takes: a multiple of 16 (whole vectors) */
#define SILU_CHUNK 1024

static void silu_range(void *p, int tid, int64_t lo, int64_t hi) {
    (void)tid;
    const silu_args *a = (const silu_args *)p;
    for (int64_t i = lo; i < hi;) {
        int64_t m = i / a->I, j = i % a->I;
        const float *g = a->gu + m * 2 * a->I, *u = g + a->I;
        float *dst = a->act + m * a->I;
        if (j + VW <= a->I && i + VW <= hi) {
            vfw gv = load_vw(g + j);
            store_vw(dst + j, gv / (vsplat(1.0f) + vexp(-gv)) * load_vw(u + j));
            i += VW;
        } else {
            dst[j] = g[j] / (1.0f + sexp(-g[j])) * u[j];
            i += 1;
        }
    }
}

static void rms_norm(const float *x, const float *w, float *y, int M, int64_t H, float eps) {
    for (int m = 0; m < M; m++) {
        const float *xr = x + m * H;
        float *yr = y + m * H;
        vfw acc[VPARTS];
        for (int h = 0; h < VPARTS; h++) acc[h] = (vfw){0};
        int64_t i = 0;
        for (; i + 16 <= H; i += 16)
            for (int h = 0; h < VPARTS; h++) {
                vfw v = load_vw(xr + i + VW * h);
                acc[h] += v * v;
            }
        float ss = hsum_parts(acc);
        for (; i < H; i++) ss += xr[i] * xr[i];
        float rstd = 1.0f / sqrtf(ss / (float)H + eps);
        for (i = 0; i < H; i++) yr[i] = w[i] * (xr[i] * rstd);
    }
}

INLINE float table(const void *t, int dt, int64_t i) {
    return dt == DT_BF16 ? bf16_to_f32(((const uint16_t *)t)[i]) : ((const float *)t)[i];
}

/* RoPE on the q and k heads of one row in place (rotate-half layout, ``s`` with its first
 * half negated as ``RotaryEmbedding`` stores it); c, s: the row's position's cos / sin. */
static void rope(float *row, int nheads, int D, const float *c, const float *s) {
    const int half = D / 2;
    float tmp[256];
    for (int h = 0; h < nheads; h++) {
        float *x = row + (int64_t)h * D;
        for (int d = 0; d < D; d++) {
            float sw = d < half ? x[d + half] : x[d - half];
            tmp[d] = x[d] * c[d] + sw * s[d];
        }
        memcpy(x, tmp, sizeof(float) * D);
    }
}

static void store_kv(const float *src, void *cache, int dt, int64_t slot, int64_t n) {
    if (dt == DT_BF16) {
        uint16_t *dst = (uint16_t *)cache + slot * n;
        for (int64_t i = 0; i < n; i++) dst[i] = f32_to_bf16(src[i]);
    } else {
        memcpy((float *)cache + slot * n, src, sizeof(float) * n);
    }
}

/* ---- the next step's first weights, read ahead ------------------------------------------------ */

/* Between two steps the caller runs Python (sampling, scheduling, the output: ~0.5 ms of a
 * single stream's step) while the memory bus idles. The workers spend that gap reading the
 * next step's first weights (layer 0 on) into the caches, up to ``AHEAD_BYTES``, so the next
 * step starts on weights already near: a prefetch, nothing is written. The next call to the
 * job posted to the pool stops it (``job_current``) wherever it got to. */
#define AHEAD_RANGES 64

typedef struct {
    const char *p[AHEAD_RANGES];
    int64_t n[AHEAD_RANGES];
    int count;
    int64_t bytes;
} ahead_list;

/* Two lists, a step's list the other one than the last step's: a worker late to notice that
 * its read-ahead is over (descheduled between its check and its next read) reads the list it
 * started on, which the next step leaves alone. */
static ahead_list aheads[2];
static int ahead_at;

static void ahead_add(ahead_list *a, const void *p, int64_t n, int64_t budget) {
    if (!p || n <= 0 || a->count == AHEAD_RANGES || a->bytes >= budget) return;
    if (n > budget - a->bytes) n = budget - a->bytes;
    a->p[a->count] = (const char *)p;
    a->n[a->count++] = n;
    a->bytes += n;
}

/* A matrix's bytes as the products read them: its codes, then its scales and lows. */
static void ahead_matrix(ahead_list *a, const int64_t *mat, int64_t in, int64_t out,
                         int64_t budget) {
    const int dt = mat_dtype(mat);
    if (dt < 0 || dt > DT_I8PH) return;
    ahead_add(a, (const void *)mat[MAT_W], in * out * weight_eighths[dt] / 8, budget);
    const int64_t groups = in / 32 * out, per = dt == DT_I4PH || dt == DT_I8PH ? 2 : 4;
    if (dt != DT_F32 && dt != DT_BF16)
        ahead_add(a, (const void *)mat[MAT_SCALE], groups * per, budget);
    if (dt == DT_I4 || dt == DT_I4P || dt == DT_I4PH)
        ahead_add(a, (const void *)mat[MAT_LOW], groups * per, budget);
}

static void ahead_task(void *p, int tid, int nth) {
    const ahead_list *a = (const ahead_list *)p;
    if (tid == 0) return;
    int64_t lo, hi, at = 0; /* this worker's part of the list's bytes */
    split(a->bytes, 4096, tid - 1, nth - 1, &lo, &hi);
    for (int r = 0; r < a->count && at < hi; at += a->n[r], r++) {
        int64_t b0 = lo > at ? lo - at : 0, b1 = hi - at < a->n[r] ? hi - at : a->n[r];
        for (int64_t b = b0; b < b1; b += 4096) {
            if (!job_current()) return;
            const int64_t e = b + 4096 < b1 ? b + 4096 : b1;
            for (int64_t i = b; i < e; i += 64) __builtin_prefetch(a->p[r] + i, 0, 2);
        }
    }
}

/* 8 MiB: a quarter of a Zen 3's 32 MiB L3, a bfloat16 SmolLM2-135M layer (7 MB) read in a
 * gap of ~0.5 ms. 16 MiB evicted what the Python between the steps uses, and it ran slower.
 * (glibc's sysconf said 256 MiB of L3 on that 2-core VM: the host's, not the guest's share.) */
#define AHEAD_BYTES ((int64_t)8 << 20)

/* One forward of M tokens, each attending to its request's KV slots
 * req_to_token[rows[m], 0 .. seq_lens[m]) after its own K and V are written at out_loc[m]:
 * a decode step (one token per request), or a short prefill (a request's tokens in order,
 * seq_lens[m] = position + 1: causal). Logits of the R tokens ``logit_rows``: [R, vocab]
 * float32. Returns 0, or -1 when a buffer or a thread could not be had. */
/* ---- where a step's time goes (built with -DPLAIT_PHASE_TIMES only) -------------------------- */

/* Wall time of each part of the step (PH_*), added up over calls on the caller's thread (its
 * waits for the workers included) until ``plait_phase_times`` reads and clears them: for
 * bench/bench_step_phases.py. A default build has none of it. */
#ifdef PLAIT_PHASE_TIMES
static double phase_s[PH_COUNT], phase_mark;
#define PHASE_START() (phase_mark = phase_now())
#define PHASE(p)                                                                               \
    do {                                                                                       \
        const double now_ = phase_now();                                                       \
        phase_s[p] += now_ - phase_mark;                                                       \
        phase_mark = now_;                                                                     \
    } while (0)
void plait_phase_times(double *out) {
    for (int i = 0; i < PH_COUNT; i++) {
        out[i] = phase_s[i];
        phase_s[i] = 0;
    }
}
#else
#define PHASE_START() ((void)0)
#define PHASE(p) ((void)0)
#endif

/* ---- the head through its int8 screen ----------------------------------------------------- */

/* A row whose token is the argmax of its raw logits (greedy, nothing applied to the logits)
 * needs the head's exact logit only where its maximum can be. The screen is the head in
 * DT_I8PH (int8 per 32-element block: a quarter of a float32 head's bytes, half a bfloat16
 * one's) with two bounds a row (``head_screen.py``): err[j] >= max_i |w_ji - q_ji s_jb| and
 * l1[j] >= max(sum_i |w_ji|, sum_i |q_ji s_jb|). For activations x the screen's logit a_j is
 * then within
 *     eps_j = err_j |x|_1 + l1_j (dx + dxe + SCREEN_MARGIN K u (max|x| + dx))
 * of the head's own c_j: dx bounds x's int16 quantization error (|x - q s| <= 0.504 s, s the
 * block's max / I8P_X_TOP), dxe the head kernel's own rounding of x (bfloat16 activations
 * with AVX512_BF16), and K u |w| |x| each sum's float rounding, taken SCREEN_MARGIN / 2 times
 * over. Every j with a_j + eps_j >= max_k (a_k - eps_k) is a candidate, so the maximum, and
 * each value tied with it, is one. Candidates get the head's exact logit, by its own kernel
 * one row at a time (the bits a full product gives that row); the rest -inf: the row's argmax
 * (the first of tied maxima) is the full head's. A row with a non-finite activation, or more
 * than ``smax`` candidates (the model's CFG_SCREEN_MAX), takes the full head: those rows in one
 * product over their activations (the bits each row gets alone). ``counts`` (if not NULL)
 * adds the rows screened and, of them, the rows that took the full head. */
#define SCREEN_MARGIN 4.0f

typedef struct {
    int R, nth;
    int64_t V;
    float *logits;          /* [R, V]: the screen's logits in, -inf or candidates out */
    const float *err, *l1;  /* [V] */
    const float *A, *B;     /* [R]: eps_j = err_j A + l1_j B */
    float *lo;              /* [R, nth]: each thread's max of a_j - eps_j */
    const float *L;         /* [R]: the max of lo over the threads */
    int32_t *cand;          /* [R, nth, smax] */
    int32_t *count;         /* [R, nth]: candidates found (past smax: the row overflows) */
    int64_t smax;           /* the candidates a row keeps at most */
    int phase;              /* 0: lower bounds; 1: candidates */
} screen_args;

/* (V is a multiple of 16, and so are the threads' shares: whole vectors) */
static void screen_task(void *p, int tid, int nth) {
    const screen_args *s = (const screen_args *)p;
    int64_t lo, hi;
    split(s->V, 16, tid, nth, &lo, &hi);
    const vfw ninf = vsplat(-INFINITY);
    for (int r = 0; r < s->R; r++) {
        float *a = s->logits + (int64_t)r * s->V;
        const vfw A = vsplat(s->A[r]), B = vsplat(s->B[r]);
        if (s->phase == 0) { /* max_j a_j - eps_j */
            vfw best = ninf;
            for (int64_t j = lo; j < hi; j += VW) {
                const vfw b = load_vw(a + j) - (load_vw(s->err + j) * A + load_vw(s->l1 + j) * B);
                best = vselect(b > best, b, best);
            }
            float m = -INFINITY;
            for (int i = 0; i < VW; i++) m = best[i] > m ? best[i] : m;
            s->lo[r * s->nth + tid] = m;
            continue;
        }
        const vfw L = vsplat(s->L[r]);
        int32_t *cand = s->cand + ((int64_t)r * s->nth + tid) * s->smax;
        int32_t n = 0;
        for (int64_t j = lo; j < hi; j += VW) {
            const vfw up = load_vw(a + j) + (load_vw(s->err + j) * A + load_vw(s->l1 + j) * B);
            const i32xw keep = up >= L;
            int any = 0;
            for (int i = 0; i < VW; i++) any |= keep[i];
            if (any)
                for (int i = 0; i < VW; i++)
                    if (keep[i]) {
                        if (n < s->smax) cand[n] = (int32_t)(j + i);
                        n++;
                    }
            memcpy(a + j, &ninf, sizeof ninf);
        }
        s->count[r * s->nth + tid] = n;
    }
}

/* From this many rows a bfloat16 head that runs by AMX is read whole, not through its screen:
 * there the screen's int8 product is no cheaper than AMX's (49,152 x 576, 2 threads of a Xeon,
 * from L3: 8 rows 1.42 against 1.39 ms, 32 rows 5.37 against 5.01), and its bounds' passes and
 * candidates come on top (a decode batch of 8 SmolLM2 rows: the head 4.4 -> 2.4 ms a step).
 * The argmax is the same either way (the screen's finite logits are the full head's bits). */
#define AMX_HEAD_ROWS 8

/* logits [R, V] of the R rows of xn, exact at each row's argmax candidates and -inf elsewhere
 * (or the full head's, where the screen does not narrow a row). */
static int screened_head(const int64_t *ptrs, int64_t H, int64_t V, const float *xn, int R,
                         float *logits, int nth, int64_t smax, int64_t *counts) {
    gemv_args gs = product(ptrs + P_SCREEN, H, V, xn, NULL, logits, 0, R);
    int rc = gemv(&gs, nth);
    if (rc != 0) return rc;
    const int head_dt = mat_dtype(ptrs + P_LM_HEAD);
    const size_t floats = (size_t)R * (3 + (size_t)nth),
                 ints = (size_t)R * nth * (size_t)(smax + 1) + (size_t)R;
    float *A = (float *)malloc(floats * sizeof(float) + ints * sizeof(int32_t));
    if (!A) return -1;
    float *B = A + R, *L = B + R, *lo = L + R;
    int32_t *count = (int32_t *)(lo + (size_t)R * nth), *full = count + (size_t)R * nth,
            *cand = full + R;
    int screened = 0;
    for (int r = 0; r < R; r++) {
        const float *x = xn + (int64_t)r * H;
        double x1 = 0;
        float xmax = 0, dxe = 0;
        for (int64_t i = 0; i < H; i++) {
            const float v = fabsf(x[i]);
            x1 += v;
            xmax = v > xmax ? v : xmax; /* (a NaN leaves xmax, not x1) */
#if BF16_DOT
            if (head_dt == DT_BF16) {
                const float e = fabsf(x[i] - bf16_to_f32(f32_to_bf16(x[i])));
                dxe = e > dxe ? e : dxe;
            }
#endif
        }
        const float dx = 0.504f * (xmax / I8P_X_TOP) * 1.0001f;
        const float u = 0x1p-24f;
        A[r] = (float)x1 * 1.0001f;
        B[r] = (dx + dxe + SCREEN_MARGIN * (float)H * u * (xmax + dx)) * 1.0001f;
        if (!isfinite(A[r]) || !isfinite(B[r])) A[r] = NAN; /* this row takes the full head */
        else screened++;
    }
    if (screened) {
        screen_args sa = {.R = R, .nth = nth, .V = V, .logits = logits,
                          .err = (const float *)ptrs[P_SCREEN_ERR],
                          .l1 = (const float *)ptrs[P_SCREEN_L1], .A = A, .B = B, .lo = lo,
                          .L = L, .cand = cand, .count = count, .smax = smax, .phase = 0};
        parallel(screen_task, &sa, nth);
        for (int r = 0; r < R; r++) {
            float m = -INFINITY;
            for (int t = 0; t < nth; t++) m = lo[r * nth + t] > m ? lo[r * nth + t] : m;
            L[r] = m;
        }
        sa.phase = 1;
        parallel(screen_task, &sa, nth);
    }
    int nfull = 0;
    for (int r = 0; r < R && rc == 0; r++) {
        const float *x = xn + (int64_t)r * H;
        float *row = logits + (int64_t)r * V;
        int64_t total = 0; /* (at least 1 where screened: the max of a_j - eps_j passes) */
        for (int t = 0; t < nth && !isnan(A[r]); t++) total += count[r * nth + t];
        if (isnan(A[r]) || total > smax) {
            full[nfull++] = r;
            continue;
        }
        const int64_t rowb = H * weight_eighths[head_dt] / 8;
        /* a row the full head computes in a 16-row block by AMX takes that whole block, so
         * that its logit is the full head's bits (AMX's sums are the same whatever the
         * block's other rows); candidates come in ascending order, so a block two of them
         * share is computed once */
        float block[16];
        int64_t have = -1; /* the block in ``block`` */
        for (int t = 0; t < nth && rc == 0; t++) {
            const int32_t *c = cand + ((int64_t)r * nth + t) * smax;
            for (int32_t k = 0; k < count[r * nth + t] && rc == 0; k++) {
                gemv_args g = product(ptrs + P_LM_HEAD, H, 1, x, NULL, row + c[k], 0, 1);
                const int64_t b0 = c[k] / 16 * 16;
                if (!(amx_product(&g) && b0 + 16 <= V)) {
                    g.w = (const char *)g.w + c[k] * rowb;
                    rc = gemv(&g, 1);
                    continue;
                }
                if (b0 != have) {
                    g.out = g.ldy = 16;
                    g.y = block;
                    g.w = (const char *)g.w + b0 * rowb;
                    rc = gemv(&g, 1);
                    have = b0;
                }
                row[c[k]] = block[c[k] - b0];
            }
        }
    }
    if (nfull && rc == 0) { /* those rows' activations packed, their logits put back */
        float *x = (float *)malloc(sizeof(float) * (size_t)nfull * (size_t)(H + V));
        if (!x) rc = -1;
        else {
            float *y = x + (size_t)nfull * H;
            for (int i = 0; i < nfull; i++)
                memcpy(x + (int64_t)i * H, xn + (int64_t)full[i] * H, sizeof(float) * H);
            gemv_args g = product(ptrs + P_LM_HEAD, H, V, x, NULL, y, 0, nfull);
            rc = gemv(&g, nth);
            for (int i = 0; i < nfull && rc == 0; i++)
                memcpy(logits + (int64_t)full[i] * V, y + (int64_t)i * V, sizeof(float) * V);
            free(x);
        }
    }
    if (counts) {
        counts[0] += R;
        counts[1] += nfull;
    }
    free(A);
    return rc;
}

/* The first index of ``x`` in ``row[0, V)`` (which holds it), a vector at a time. */
static int64_t first_equal(const float *row, int64_t V, float x) {
    int64_t v = 0;
    for (; v + VW <= V; v += VW) {
        const i32xw eq = load_vw(row + v) == vsplat(x);
        int any = 0;
        for (int i = 0; i < VW; i++) any |= eq[i];
        if (any)
            for (int i = 0; i < VW; i++)
                if (eq[i]) return v + i;
    }
    while (row[v] != x) v++;
    return v;
}

/* Each row's argmax: the first of tied maxima, or the first NaN where a row holds one (numpy's
 * ``argmax``, which the scheduler's sampler takes on the CPU). */
static void argmax_rows(const float *logits, int R, int64_t V, int64_t *out) {
    for (int r = 0; r < R; r++) {
        const float *row = logits + (int64_t)r * V;
        vfw m = vsplat(-INFINITY);
        i32xw nan = {0};
        int64_t v = 0;
        for (; v + VW <= V; v += VW) {
            const vfw x = load_vw(row + v);
            nan |= x != x;
            m = vselect(x > m, x, m);
        }
        float mx = -INFINITY;
        int any_nan = 0;
        for (int i = 0; i < VW; i++) {
            mx = m[i] > mx ? m[i] : mx;
            any_nan |= nan[i];
        }
        for (; v < V; v++) {
            any_nan |= row[v] != row[v];
            mx = row[v] > mx ? row[v] : mx;
        }
        int64_t best = 0;
        if (any_nan)
            while (row[best] == row[best]) best++;
        else
            best = first_equal(row, V, mx);
        out[r] = best;
    }
}

/* ``argmax_rows`` for tests: each of ``R`` rows of ``V`` floats. */
void plait_argmax_rows(const float *logits, int R, int64_t V, int64_t *out) {
    argmax_rows(logits, R, V, out);
}

int plait_decode_step(const int64_t *cfg, const int64_t *ptrs, const int64_t *layer_ptrs,
                      double eps, double scale, int M, const int64_t *input_ids,
                      const int64_t *positions, const int64_t *out_loc, const int64_t *rows,
                      const int64_t *seq_lens, const int64_t *req_to_token, int64_t stride,
                      const int64_t *logit_rows, int R, float *logits, int nthreads,
                      int argmax_only, int64_t *screen_counts, int64_t *next_ids) {
    const int L = (int)cfg[CFG_LAYERS], Hq = (int)cfg[CFG_HEADS], Hkv = (int)cfg[CFG_KV_HEADS],
              D = (int)cfg[CFG_HEAD_DIM], wdt = (int)cfg[CFG_TABLE_DTYPE], kvdt = (int)cfg[CFG_KVDTYPE];
    const int64_t H = cfg[CFG_HIDDEN], I = cfg[CFG_INTER], V = cfg[CFG_VOCAB];
    const int64_t QKV = (int64_t)(Hq + 2 * Hkv) * D;
    if (D % 16 || D > 256 || Hq % Hkv || Hq / Hkv > 256) return -2;
    nthreads = nthreads < 1 ? 1 : nthreads > MAX_THREADS ? MAX_THREADS : nthreads;
    int64_t max_seq = 1;
    for (int m = 0; m < M; m++) max_seq = seq_lens[m] > max_seq ? seq_lens[m] : max_seq;

    int64_t score_floats;
    int64_t floats = M * (2 * H + QKV + Hq * D + 3 * I + 2 * D) +
                     attn_scratch_floats(M, Hq, Hkv, D, max_seq, nthreads, &score_floats) + 64;
    const size_t float_bytes = ((size_t)floats * sizeof(float) + 63) & ~(size_t)63;
    const size_t bytes = float_bytes + sizeof(int64_t) * (size_t)(M + 1) +
                         sizeof(atomic_int) * (size_t)M * Hkv;
    float *buf = (float *)aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!buf) return -1;
    float *hidden = buf, *xn = hidden + M * H, *qkv = xn + M * H, *attn = qkv + M * QKV,
          *gu = attn + M * Hq * D, *act = gu + M * 2 * I, *cs = act + M * I,
          *scores = cs + M * 2 * D, *part = scores + (int64_t)nthreads * score_floats;
    int64_t *unit0 = (int64_t *)((char *)buf + float_bytes);
    atomic_int *done = (atomic_int *)(unit0 + M + 1);
    attn_unit0(unit0, seq_lens, M, Hkv);

    nthreads = acquire_pool(nthreads);
    int rc = 0;

    const void *embed = (const void *)ptrs[P_EMBED];
    for (int m = 0; m < M; m++)
        for (int64_t i = 0; i < H; i++) hidden[m * H + i] = table(embed, wdt, input_ids[m] * H + i);

    for (int m = 0; m < M; m++) /* each row's cos | sin, shared by every layer */
        for (int d = 0; d < D; d++) {
            cs[m * 2 * D + d] = table((const void *)ptrs[P_COS], wdt, positions[m] * D + d);
            cs[m * 2 * D + D + d] = table((const void *)ptrs[P_SIN], wdt, positions[m] * D + d);
        }

    PHASE_START();
    CLAIM_STEP(1);
    for (int l = 0; l < L; l++) {
        const int64_t *lp = layer_ptrs + (int64_t)l * L_COUNT;
        rms_norm(hidden, (const float *)lp[L_ATTN_NORM], xn, M, H, (float)eps);
        PHASE(PH_NORM);
        gemv_args g = product(lp + L_QKV, H, QKV, xn, (const float *)lp[L_QKV_BIAS], qkv, 0, M);
        CLAIM_LABEL(PH_QKV);
        rc |= gemv(&g, nthreads);
        PHASE(PH_QKV);
        for (int m = 0; m < M; m++) {
            float *row = qkv + m * QKV;
            rope(row, Hq + Hkv, D, cs + m * 2 * D, cs + m * 2 * D + D);
            store_kv(row + (int64_t)Hq * D, (void *)lp[L_K], kvdt, out_loc[m], (int64_t)Hkv * D);
            store_kv(row + (int64_t)(Hq + Hkv) * D, (void *)lp[L_V], kvdt, out_loc[m],
                     (int64_t)Hkv * D);
        }
        PHASE(PH_ROPE_KV);
        attn_args at = {M, Hq, Hkv, D, kvdt, qkv, attn,
                        (const void *)lp[L_K], (const void *)lp[L_V], req_to_token, stride,
                        rows, seq_lens, scores, score_floats, (float)scale,
                        unit0, part, done, QKV};
        CLAIM_LABEL(PH_ATTENTION);
        attention(&at, nthreads);
        PHASE(PH_ATTENTION);
        gemv_args go = product(lp + L_O, (int64_t)Hq * D, H, attn, NULL, hidden, 1, M);
        CLAIM_LABEL(PH_O);
        rc |= gemv(&go, nthreads);
        PHASE(PH_O);
        rms_norm(hidden, (const float *)lp[L_MLP_NORM], xn, M, H, (float)eps);
        PHASE(PH_NORM);
        gemv_args gg = product(lp + L_GATE_UP, H, 2 * I, xn, NULL, gu, 0, M);
        CLAIM_LABEL(PH_GATE_UP);
        rc |= gemv(&gg, nthreads);
        PHASE(PH_GATE_UP);
        silu_args sa = {gu, act, M, I};
        CLAIM_LABEL(PH_SILU);
        parallel_claim(silu_range, &sa, (int64_t)M * I, SILU_CHUNK, nthreads);
        PHASE(PH_SILU);
        gemv_args gd = product(lp + L_DOWN, I, H, act, NULL, hidden, 1, M);
        CLAIM_LABEL(PH_DOWN);
        rc |= gemv(&gd, nthreads);
        PHASE(PH_DOWN);
    }
    for (int r = 0; r < R; r++) /* the rows that need logits, packed */
        rms_norm(hidden + logit_rows[r] * H, (const float *)ptrs[P_FINAL_NORM], xn + r * H, 1, H,
                 (float)eps);
    CLAIM_LABEL(PH_HEAD);
    gemv_args gl = product(ptrs + P_LM_HEAD, H, V, xn, NULL, logits, 0, R);
    if (argmax_only && ptrs[P_SCREEN + MAT_W] && R > 0 &&
        !(R >= AMX_HEAD_ROWS && amx_product(&gl))) {
        rc |= screened_head(ptrs, H, V, xn, R, logits, nthreads, cfg[CFG_SCREEN_MAX],
                            screen_counts);
    } else {
        rc |= gemv(&gl, nthreads);
    }
    if (rc == 0 && next_ids) argmax_rows(logits, R, V, next_ids);
    PHASE(PH_HEAD);
    CLAIM_STEP(0);
    const int64_t budget = AHEAD_BYTES;
    if (nthreads > 1) {
        ahead_list *ahead = &aheads[ahead_at ^= 1];
        ahead->count = 0;
        ahead->bytes = 0;
        for (int l = 0; l < L && ahead->bytes < budget; l++) {
            const int64_t *lp = layer_ptrs + (int64_t)l * L_COUNT;
            ahead_matrix(ahead, lp + L_QKV, H, QKV, budget);
            ahead_matrix(ahead, lp + L_O, (int64_t)Hq * D, H, budget);
            ahead_matrix(ahead, lp + L_GATE_UP, H, 2 * I, budget);
            ahead_matrix(ahead, lp + L_DOWN, I, H, budget);
        }
        post_ahead(ahead_task, ahead, nthreads);
    }
    pthread_mutex_unlock(&pool.step_lock);
    free(buf);
    return rc;
}

/* One product for tests and benches: y[M, out] = x[M, in] W^T (+ bias), or y += that when
 * ``accumulate``; W [out, in] in any DT_* format. Returns 0, -1 out of memory, or -2 for a
 * block format (DT_I8, DT_I4) whose ``in`` is not a multiple of 32. */
int plait_gemv(const void *w, int dtype, const float *scale, const float *low, int64_t in,
               int64_t out, const float *x, const float *bias, float *y, int accumulate, int M,
               int nthreads) {
    if ((dtype == DT_I8 || dtype == DT_I4 || dtype == DT_BF16T || is_packed(dtype)) && in % 32)
        return -2; /* whole blocks only */
    nthreads = acquire_pool(nthreads);
    int64_t mat[MAT_COUNT] = {(int64_t)w, dtype, (int64_t)scale, (int64_t)low};
    gemv_args a = product(mat, in, out, x, bias, y, accumulate, M);
    int rc = gemv(&a, nthreads);
    pthread_mutex_unlock(&pool.step_lock);
    return rc;
}

/* 1 when bfloat16 products round the activations to bfloat16 (AVX512_BF16), else 0. */
int plait_bf16_dot(void) { return BF16_DOT; }

/* 1 where the library was built with AMX_BF16 and the kernel granted the tile state: DT_BF16T
 * weights can be made (and run by AMX whatever ``plait_amx`` says), else 0. */
int plait_amx_granted(void) {
#if AMX_BF16
    return amx_granted();
#else
    return 0;
#endif
}

/* Whether bfloat16 products of whole 32-input chunks run by AMX (``amx_bf16_rows``): 1 where the
 * library was built with AMX_BF16, the kernel granted the tile state and ``want`` (1 on, 0 off,
 * -1 as it is) leaves it on, else 0. Set it between calls, not during one. */
int plait_amx(int want) {
    if (want >= 0) amx_wanted = want;
    return amx_wanted && plait_amx_granted();
}

/* The rows from which a bfloat16 head by AMX is read whole in an argmax step (``AMX_HEAD_ROWS``),
 * or 0 where the products do not run by AMX. */
int plait_amx_head_rows(void) { return plait_amx(-1) ? AMX_HEAD_ROWS : 0; }

/* 1 when DT_I8P, DT_I4P and DT_I4PH run by AVX512_VNNI, else 0. */
int plait_i8_vnni(void) { return I8_VNNI; }

/* Whether DT_I8P, DT_I4P and DT_I4PH were built: 2 by AVX512_VNNI, 1 by AVX2, 0 not (their
 * products then return -2). Both builds give the same bits. */
int plait_packed_dot(void) { return PACKED_DOT; }

/* ---- a prefill's attention (its own file, built as part of this one) ---------------------- */
#include "extend_attention.c"
