/* reimpl's CPU kernels for batch normalization (training and evaluation forward, the
 * closed-form backward); built into one library with cpu_fused.c. Mirrored by the ctypes
 * structure in cpu_batch_norm.py, whose caller has checked every operand (dtype, element
 * count, memory format, storage size, no overlap between what is written and the rest).
 *
 * Two layouts of the input, per channel c of C:
 *   planes (NCHW-contiguous): x[(n * C + c) * S + i], N planes of S elements per channel.
 *     In training a thread owns whole channels; a channel's N * S elements are swept
 *     three times while they sit in its cache (sum, centred squares, output), so the
 *     input crosses the memory bus once where torch's kernel streams it three times.
 *     The statistics are torch's sums (in double, the squares in T), so the mean and
 *     invstd agree with torch's to the bit. Backward sums are T lanes flushed to double
 *     every CHUNK elements. Evaluation is one sweep in memory order.
 *   rows (channels_last, or any input with S == 1): x[r * C + c], R = N * S rows of C.
 *     Each thread takes a contiguous share of the rows and sums blocks of ROW_BLOCK rows
 *     in T, vectorized across the channels, each block then added to private double
 *     sums, combined over the threads in thread order (a result never depends on
 *     timing, only on the thread count). The statistics are one pass of sums shifted by
 *     the first row, K_c = x[0, c]: S1 = sum(x - K), S2 = sum((x - K)^2), var_sum =
 *     S2 - S1^2 / R (+ R (mean - (T)mean)^2: about the rounded mean, as torch's), which
 *     cancels nothing much unless K sits many standard deviations from the mean. (torch
 *     sums this layout in T per thread: ours are the more accurate where they differ.)
 *
 * The elementwise arithmetic is torch's vectorized CPU kernel's (its fused
 * multiply-adds included), so that results agree to the last bit whenever the
 * statistics do (for a large mean, y = x * alpha + beta cancels, and only identical
 * alpha and beta give identical outputs):
 *   mean = (T)(sum x / R); var_sum = sum (x - mean)^2; var = var_sum / R in T;
 *   invstd = (T)(1 / sqrt((double)var + eps)); eval: invstd = 1 / sqrt(running_var + eps)
 *   in T; alpha = invstd * w, beta = fma(-mean, alpha, b), y = fma(x, alpha, beta).
 * Backward, per channel, with sdy = sum dy and sdot = sum (x - mean) * dy:
 *   training: k = (T)sdot * invstd * invstd / R, gm = (T)(sdy / R),
 *             dx = fma(-(x - mean), k, dy - gm) * invstd * w
 *   eval:     dx = dy * invstd * w
 *   dw = (T)(sdot * invstd), db = (T)sdy.
 *
 * SyncBatchNorm's local part uses the same kernels: a training forward with y NULL is
 * the statistics alone, and a backward given `sums` (sdy for every channel, then sdot,
 * already reduced over the ranks) and `total` (the ranks' whole count R) skips its own
 * sums and forms dx from those.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
  const void *x, *w, *b, *dy;          /* w, b: NULL when absent; dy: backward only */
  const void *running_mean, *running_var; /* eval forward: the statistics used */
  void *y, *mean, *invstd, *var_sum;   /* forward writes mean, invstd (var_sum: training) */
  void *dx, *dw, *db;                  /* backward outputs, each NULL when not wanted;
                                          backward reads mean and invstd */
  int64_t n, c, s;                     /* x as (n, c, s) */
  int32_t rows, train;                 /* rows: the channels_last layout (see the top) */
  double eps;
  const void *sums;                    /* backward: given sdy[C], sdot[C] (NULL: its own) */
  int64_t total;                       /* ... and the count they span */
} batch_norm_t;

#define LANES 16 /* independent accumulators: the sums vectorize and pipeline */
#define CHUNK 2048 /* backward: elements summed in T lanes before they join a double sum */

/* below this many elements a call runs on one thread: waking the team would cost more
   than the work (and a result never depends on timing either way) */
#define PARALLEL_MIN 32768

static int bn_threads(int64_t elements) {
#ifdef _OPENMP
  return elements < PARALLEL_MIN ? 1 : omp_get_max_threads();
#else
  (void)elements;
  return 1;
#endif
}

static int bn_thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

static int bn_team(void) {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

/* per-thread buffers of 2 * C elements of `size` bytes each start on their own cache
   line, or two threads writing neighbouring sums would trade the line back and forth:
   the per-thread stride in elements, whole 64-byte lines */
static size_t line_stride(int64_t c, size_t size) {
  return (2 * (size_t)c * size + 63) / 64 * 64 / size;
}

/* nt per-thread buffers of `stride` elements of `size` bytes, line-aligned (zeroed) */
static void *per_thread(int nt, size_t stride, size_t size) {
  void *p = aligned_alloc(64, (size_t)nt * stride * size);
  if (p) memset(p, 0, (size_t)nt * stride * size);
  return p;
}

static double lanes_total(const double *acc) {
  double t = 0;
  for (int j = 0; j < LANES; j++) t += acc[j];
  return t;
}

/* BODY for i in [0, len) in LANES independent lanes: BODY reads the element index _i_
   and its lane _j (so sums into lane arrays vectorize and pipeline) */
#define LANE_LOOP(len, BODY)                                                               \
  {                                                                                        \
    int64_t _b = 0;                                                                        \
    for (; _b + LANES <= (len); _b += LANES) {                                             \
      _Pragma("omp simd") for (int _j = 0; _j < LANES; _j++) {                             \
        const int64_t _i_ = _b + _j;                                                       \
        BODY                                                                               \
      }                                                                                    \
    }                                                                                      \
    for (int _j = 0; _b + _j < (len); _j++) {                                              \
      const int64_t _i_ = _b + _j;                                                         \
      BODY                                                                                 \
    }                                                                                      \
  }

/* ACC[j] += EXPR over the elements (LANE_SUM2: two sums over the same elements) */
#define LANE_SUM(len, ACC, EXPR) LANE_LOOP(len, ACC[_j] += (EXPR);)
#define LANE_SUM2(len, ACC, EXPR, ACC2, EXPR2)                                             \
  LANE_LOOP(len, ACC[_j] += (EXPR); ACC2[_j] += (EXPR2);)

/* per-channel sums over rows (rows layout), inside a parallel region: this thread's
   contiguous share of the R rows, in blocks of ROW_BLOCK rows summed in T (vectorized
   across the channels), each block then added to the thread's double sums d1, d2 (in
   acc, dstride per thread; part: 2 * C T, tstride per thread). DECL declares the row's pointers
   for row r, E1 and E2 are the terms at channel ch. */
#define ROW_BLOCK 32
#define ROW_SUMS(T, DECL, E1, E2)                                                          \
  {                                                                                        \
    const int tid = bn_thread_id(), team = bn_team();                                      \
    const int64_t per = (R + team - 1) / team, lo = per * tid;                             \
    const int64_t hi = lo + per < R ? lo + per : R;                                        \
    double *d1 = acc + (size_t)tid * dstride, *d2 = d1 + C;                                \
    T *p1 = part + (size_t)tid * tstride, *p2 = p1 + C;                                    \
    for (int64_t r0 = lo; r0 < hi; r0 += ROW_BLOCK) {                                      \
      const int64_t r1 = r0 + ROW_BLOCK < hi ? r0 + ROW_BLOCK : hi;                        \
      for (int64_t ch = 0; ch < C; ch++) p1[ch] = p2[ch] = 0;                              \
      for (int64_t r = r0; r < r1; r++) {                                                  \
        DECL                                                                               \
        _Pragma("omp simd") for (int64_t ch = 0; ch < C; ch++) {                           \
          p1[ch] += (E1);                                                                  \
          p2[ch] += (E2);                                                                  \
        }                                                                                  \
      }                                                                                    \
      for (int64_t ch = 0; ch < C; ch++) {                                                 \
        d1[ch] += (double)p1[ch];                                                          \
        d2[ch] += (double)p2[ch];                                                          \
      }                                                                                    \
    }                                                                                      \
  }

/* per channel: alpha = invstd * w, beta = b - mean * alpha (torch's linear terms) */
#define LINEAR_TERMS(T, FMA)                                                               \
  for (int64_t ch = 0; ch < C; ch++) {                                                     \
    const T al = invstd[ch] * (w ? w[ch] : (T)1);                                          \
    alpha[ch] = al;                                                                        \
    beta[ch] = FMA(-mean[ch], al, b ? b[ch] : (T)0);                                       \
  }

#define DEFINE_BATCH_NORM(T, SQRT, FMA, NAME_F, NAME_B)                                    \
  /* training statistics of channel ch (planes layout) */                                  \
  static void NAME_F##_plane_stats(const batch_norm_t *a, int64_t ch, T *m_out, T *vs_out) { \
    const T *x = (const T *)a->x;                                                          \
    const int64_t N = a->n, C = a->c, S = a->s;                                            \
    double acc[LANES] = {0};                                                               \
    for (int64_t n = 0; n < N; n++) {                                                      \
      const T *p = x + (n * C + ch) * S;                                                   \
      LANE_SUM(S, acc, (double)p[_i_])                                                     \
    }                                                                                      \
    const T m = (T)(lanes_total(acc) / (double)(N * S));                                   \
    double sq[LANES] = {0};                                                                \
    for (int64_t n = 0; n < N; n++) {                                                      \
      const T *p = x + (n * C + ch) * S;                                                   \
      LANE_SUM(S, sq, (double)(T)((p[_i_] - m) * (p[_i_] - m)))                            \
    }                                                                                      \
    *m_out = m;                                                                            \
    *vs_out = (T)lanes_total(sq);                                                          \
  }                                                                                        \
                                                                                           \
  /* training statistics of every channel (rows layout): shifted one-pass sums */          \
  static int NAME_F##_row_stats(const batch_norm_t *a, T *mean, T *var_sum) {              \
    const T *x = (const T *)a->x;                                                          \
    const int64_t C = a->c, R = a->n * a->s;                                               \
    const int nt = bn_threads(a->n * a->c * a->s);                                         \
    const size_t dstride = line_stride(C, sizeof(double)), tstride = line_stride(C, sizeof(T)); \
    double *acc = per_thread(nt, dstride, sizeof(double));                                 \
    T *part = per_thread(nt, tstride, sizeof(T));                                          \
    if (!acc || !part) {                                                                   \
      free(acc);                                                                           \
      free(part);                                                                          \
      return 1;                                                                            \
    }                                                                                      \
    /* shifted by K = the first row (x itself): d = x - K stays small where x - 0 would */ \
    _Pragma("omp parallel num_threads(nt)")                                                \
    ROW_SUMS(T, const T *xr = x + r * C;, xr[ch] - x[ch], (xr[ch] - x[ch]) * (xr[ch] - x[ch])) \
    for (int64_t ch = 0; ch < C; ch++) {                                                   \
      double t1 = 0, t2 = 0;                                                               \
      for (int t = 0; t < nt; t++) {                                                       \
        t1 += acc[(size_t)t * dstride + (size_t)ch];                                       \
        t2 += acc[(size_t)t * dstride + (size_t)(C + ch)];                                 \
      }                                                                                    \
      const double mu = (double)x[ch] + t1 / (double)R;                                    \
      const T m = (T)mu;                                                                   \
      /* sum (x - m)^2 about the rounded mean m, as torch forms it */                      \
      const double shift = mu - (double)m;                                                 \
      const double vs = t2 - t1 * t1 / (double)R + (double)R * shift * shift;              \
      mean[ch] = m;                                                                        \
      var_sum[ch] = (T)(vs > 0 ? vs : 0);                                                  \
    }                                                                                      \
    free(acc);                                                                             \
    free(part);                                                                            \
    return 0;                                                                              \
  }                                                                                        \
                                                                                           \
  static T NAME_F##_invstd(T var_sum, int64_t count, double eps) {                         \
    const T var = var_sum / (T)count;                                                      \
    return (T)(1.0 / sqrt((double)var + eps));                                             \
  }                                                                                        \
                                                                                           \
  int NAME_F(const batch_norm_t *a) {                                                      \
    const T *x = (const T *)a->x, *w = (const T *)a->w, *b = (const T *)a->b;              \
    T *y = (T *)a->y, *mean = (T *)a->mean, *invstd = (T *)a->invstd;                      \
    const int64_t N = a->n, C = a->c, S = a->s, count = N * S;                             \
    const int nt = bn_threads(N * C * S);                                                  \
    T *alpha = malloc(2 * (size_t)C * sizeof(T));                                          \
    if (!alpha) return 1;                                                                  \
    T *beta = alpha + C;                                                                   \
    if (!a->train) { /* mean and invstd: written only where backward wants them */         \
      const T *rm = (const T *)a->running_mean, *rv = (const T *)a->running_var;           \
      for (int64_t ch = 0; ch < C; ch++) {                                                 \
        const T is = (T)1 / SQRT(rv[ch] + (T)a->eps);                                      \
        if (mean) mean[ch] = rm[ch];                                                       \
        if (invstd) invstd[ch] = is;                                                       \
        alpha[ch] = is * (w ? w[ch] : (T)1);                                               \
        beta[ch] = FMA(-rm[ch], alpha[ch], b ? b[ch] : (T)0);                              \
      }                                                                                    \
    } else if (a->rows) {                                                                  \
      T *vs = (T *)a->var_sum;                                                             \
      if (NAME_F##_row_stats(a, mean, vs)) {                                               \
        free(alpha);                                                                       \
        return 1;                                                                          \
      }                                                                                    \
      for (int64_t ch = 0; ch < C; ch++) invstd[ch] = NAME_F##_invstd(vs[ch], count, a->eps); \
      if (!y) { /* the statistics alone */                                                 \
        free(alpha);                                                                       \
        return 0;                                                                          \
      }                                                                                    \
      LINEAR_TERMS(T, FMA)                                                                 \
    } else {                                                                               \
      /* planes: a thread's channel stays in its cache from the statistics to the output */ \
      T *vs = (T *)a->var_sum;                                                             \
      _Pragma("omp parallel for schedule(static) num_threads(nt)")                         \
      for (int64_t ch = 0; ch < C; ch++) {                                                 \
        NAME_F##_plane_stats(a, ch, &mean[ch], &vs[ch]);                                   \
        invstd[ch] = NAME_F##_invstd(vs[ch], count, a->eps);                               \
        const T al = invstd[ch] * (w ? w[ch] : (T)1);                                      \
        const T be = FMA(-mean[ch], al, b ? b[ch] : (T)0);                                 \
        for (int64_t n = 0; y && n < N; n++) {                                             \
          const T *p = x + (n * C + ch) * S;                                               \
          T *q = y + (n * C + ch) * S;                                                     \
          _Pragma("omp simd") for (int64_t i = 0; i < S; i++) q[i] = FMA(p[i], al, be);    \
        }                                                                                  \
      }                                                                                    \
      free(alpha);                                                                         \
      return 0;                                                                            \
    }                                                                                      \
    if (a->rows) {                                                                         \
      const int64_t R = count;                                                             \
      _Pragma("omp parallel for schedule(static) num_threads(nt)")                         \
      for (int64_t r = 0; r < R; r++) {                                                    \
        const T *xr = x + r * C;                                                           \
        T *yr = y + r * C;                                                                 \
        _Pragma("omp simd") for (int64_t ch = 0; ch < C; ch++) {                           \
          yr[ch] = FMA(xr[ch], alpha[ch], beta[ch]);                                       \
        }                                                                                  \
      }                                                                                    \
    } else { /* evaluation, planes: one sweep in memory order */                           \
      _Pragma("omp parallel for schedule(static) num_threads(nt)")                         \
      for (int64_t pl = 0; pl < N * C; pl++) {                                             \
        const T al = alpha[pl % C], be = beta[pl % C];                                     \
        const T *p = x + pl * S;                                                           \
        T *q = y + pl * S;                                                                 \
        _Pragma("omp simd") for (int64_t i = 0; i < S; i++) q[i] = FMA(p[i], al, be);      \
      }                                                                                    \
    }                                                                                      \
    free(alpha);                                                                           \
    return 0;                                                                              \
  }                                                                                        \
                                                                                           \
  /* dx of one channel's elements from its sums (see the top) */                           \
  static inline void NAME_B##_dx(const T *xp, const T *dyp, T *dxp, int64_t len, T m,      \
                                 T is, T wc, T k, T gm, int train) {                       \
    if (train) {                                                                           \
      _Pragma("omp simd") for (int64_t i = 0; i < len; i++) {                              \
        dxp[i] = FMA(-(xp[i] - m), k, dyp[i] - gm) * is * wc;                              \
      }                                                                                    \
    } else {                                                                               \
      _Pragma("omp simd") for (int64_t i = 0; i < len; i++) dxp[i] = dyp[i] * is * wc;     \
    }                                                                                      \
  }                                                                                        \
                                                                                           \
  int NAME_B(const batch_norm_t *a) {                                                      \
    const T *x = (const T *)a->x, *w = (const T *)a->w, *dy = (const T *)a->dy;            \
    const T *mean = (const T *)a->mean, *invstd = (const T *)a->invstd;                    \
    T *dx = (T *)a->dx, *dw = (T *)a->dw, *db = (T *)a->db;                                \
    const int64_t N = a->n, C = a->c, S = a->s;                                            \
    const T *given = (const T *)a->sums;                                                   \
    const int64_t count = given ? a->total : N * S;                                        \
    const int nt = bn_threads(N * C * S);                                                  \
    const int train = a->train;                                                            \
    if (!a->rows) {                                                                        \
      _Pragma("omp parallel for schedule(static) num_threads(nt)")                         \
      for (int64_t ch = 0; ch < C; ch++) {                                                 \
        const T m = mean[ch], is = invstd[ch], wc = w ? w[ch] : (T)1;                      \
        double sdy = given ? (double)given[ch] : 0, sdot = given ? (double)given[C + ch] : 0; \
        for (int64_t n = 0; !given && n < N; n++) {                                        \
          for (int64_t i0 = 0; i0 < S; i0 += CHUNK) {                                      \
            const int64_t len = S - i0 < CHUNK ? S - i0 : CHUNK;                           \
            const T *xp = x + (n * C + ch) * S + i0, *dyp = dy + (n * C + ch) * S + i0;    \
            T sdy_l[LANES] = {0}, sdot_l[LANES] = {0};                                     \
            LANE_SUM2(len, sdy_l, dyp[_i_], sdot_l, (xp[_i_] - m) * dyp[_i_])              \
            for (int j = 0; j < LANES; j++) {                                              \
              sdy += (double)sdy_l[j];                                                     \
              sdot += (double)sdot_l[j];                                                   \
            }                                                                              \
          }                                                                                \
        }                                                                                  \
        if (dx) {                                                                          \
          const T k = (T)sdot * is * is / (T)count, gm = (T)(sdy / (double)count);         \
          for (int64_t n = 0; n < N; n++) {                                                \
            const int64_t o = (n * C + ch) * S;                                            \
            NAME_B##_dx(x + o, dy + o, dx + o, S, m, is, wc, k, gm, train);                \
          }                                                                                \
        }                                                                                  \
        if (dw) dw[ch] = (T)(sdot * (double)is);                                           \
        if (db) db[ch] = (T)sdy;                                                           \
      }                                                                                    \
      return 0;                                                                            \
    }                                                                                      \
    /* per thread: sum dy, then sum (x - mean) * dy, per channel; then k and gm */         \
    const size_t dstride = line_stride(C, sizeof(double)), tstride = line_stride(C, sizeof(T)); \
    double *acc = per_thread(nt, dstride, sizeof(double));                                 \
    T *part = per_thread(nt, tstride, sizeof(T));                                          \
    T *kg = malloc(2 * (size_t)C * sizeof(T));                                             \
    if (!acc || !part || !kg) {                                                            \
      free(acc);                                                                           \
      free(part);                                                                          \
      free(kg);                                                                            \
      return 1;                                                                            \
    }                                                                                      \
    const int64_t R = N * S;                                                               \
    if (!given) {                                                                          \
      _Pragma("omp parallel num_threads(nt)")                                              \
      ROW_SUMS(T, const T *xr = x + r * C; const T *dyr = dy + r * C;, dyr[ch],            \
               (xr[ch] - mean[ch]) * dyr[ch])                                              \
    }                                                                                      \
    T *kc = kg, *gmc = kg + C;                                                             \
    for (int64_t ch = 0; ch < C; ch++) {                                                   \
      double t1 = given ? (double)given[ch] : 0, t2 = given ? (double)given[C + ch] : 0;   \
      for (int t = 0; !given && t < nt; t++) {                                             \
        t1 += acc[(size_t)t * dstride + (size_t)ch];                                       \
        t2 += acc[(size_t)t * dstride + (size_t)(C + ch)];                                 \
      }                                                                                    \
      const T is = invstd[ch];                                                             \
      kc[ch] = (T)t2 * is * is / (T)count;                                                 \
      gmc[ch] = (T)(t1 / (double)count);                                                   \
      if (dw) dw[ch] = (T)(t2 * (double)is);                                               \
      if (db) db[ch] = (T)t1;                                                              \
    }                                                                                      \
    if (dx) {                                                                              \
      _Pragma("omp parallel for schedule(static) num_threads(nt)")                         \
      for (int64_t r = 0; r < R; r++) {                                                    \
        const T *xr = x + r * C, *dyr = dy + r * C;                                        \
        T *dxr = dx + r * C;                                                               \
        if (train) {                                                                       \
          _Pragma("omp simd") for (int64_t ch = 0; ch < C; ch++) {                         \
            const T wc = w ? w[ch] : (T)1;                                                 \
            dxr[ch] = FMA(-(xr[ch] - mean[ch]), kc[ch], dyr[ch] - gmc[ch]) * invstd[ch] * wc; \
          }                                                                                \
        } else {                                                                           \
          _Pragma("omp simd") for (int64_t ch = 0; ch < C; ch++) {                         \
            dxr[ch] = dyr[ch] * invstd[ch] * (w ? w[ch] : (T)1);                           \
          }                                                                                \
        }                                                                                  \
      }                                                                                    \
    }                                                                                      \
    free(acc);                                                                             \
    free(part);                                                                            \
    free(kg);                                                                              \
    return 0;                                                                              \
  }

DEFINE_BATCH_NORM(float, sqrtf, fmaf, batch_norm_fwd_f32, batch_norm_bwd_f32)
DEFINE_BATCH_NORM(double, sqrt, fma, batch_norm_fwd_f64, batch_norm_bwd_f64)
