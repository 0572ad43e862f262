/* Adafactor (Shazeer & Stern, 2018) on the CPU: every tensor of one dtype in one call. Built
 * into one library with cpu_fused.c and called through the same batch_t (repeated below: the
 * two definitions must stay identical, as the one ctypes Structure in cpu_fused.py mirrors
 * both).
 *
 * The families in cpu_fused.c read each element once. Adafactor cannot: the update of any
 * element needs three reductions of its whole tensor -- the param's root mean square (the
 * relative step size), the row and column means of g^2 (the factored second moment, one
 * matrix per index of the leading dims) and the update's root mean square (clipping by d).
 * So each tensor takes three sweeps:
 *   1. read the param and the grad: the sum of p^2, and g^2 summed by row and by column
 *      (factored; the factors' moving averages follow from those sums), or the variance's
 *      moving average element by element, and with it the sum of the update's squares
 *      (not factored);
 *   2. (factored only) read the grad: the sum of the update's squares;
 *   3. read the grad and the param, write the param.
 * The multi-tensor form makes about fifteen sweeps. Every sweep splits a tensor into the
 * same fixed chunk per thread, so a tensor of a few MB is still in each core's cache when
 * sweeps 2 and 3 come back to it.
 *
 * One parallel region covers all tensors. Sums accumulate in double; each thread's partial
 * is added in thread order after a barrier, so a result depends on the thread count but
 * never on timing. torch sums in float in its own order, so the results agree with it to
 * rounding, not bit for bit; every elementwise operation is the multi-tensor form's, in T.
 * The caller has checked every tensor (the factors against the shapes its param gives them)
 * and gives each tensor's last two dims in the options (0, 0: not factored).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID omp_get_thread_num()
#define THREADS omp_get_num_threads()
#define MAX_THREADS omp_get_max_threads()
#else
#define THREAD_ID 0
#define THREADS 1
#define MAX_THREADS 1
#endif

#define MAX_ROLES 6

/* as in cpu_fused.c: t[r][j] is the data of role r of tensor j (0 param, 1 grad, 2 row_var,
 * 3 col_var, 4 variance; a NULL entry: a state this tensor does not keep), n[j] its length;
 * per[0] = 1 - beta2_t = t^beta2_decay, per[1] = rho_t = min(lr, 1 / sqrt(t)) */
typedef struct {
  int64_t k;
  const int64_t *n;
  void **t[MAX_ROLES];
  const double *per[3];
  const int32_t *first;
  double grad_scale; /* GradScaler's scale, to divide the grads by; 0: not scaled */
} batch_t;

/* shrink = 1 - lr * weight_decay (1 without decay); dims: 2 per tensor (rows, cols) */
typedef struct {
  double eps1, eps1sq, eps2, d, shrink;
  int32_t maximize;
  const int64_t *dims;
} adafactor_opts;

/* torch's lerp: a + w (b - a) for w < 1/2, b - (b - a)(1 - w) otherwise */
#define LERP(a, b, w, LOW) ((LOW) ? (a) + (w) * ((b) - (a)) : (b) - ((b) - (a)) * (1 - (w)))
/* unscaled first when GradScaler handed its scale over (and stored so: the later sweeps
 * read the unscaled grad), then signed (maximize) */
#define GRAD(gp, i) (scaled ? (gp[i] = gp[i] / scale_) : gp[i]) * sign
/* 1 / max(sqrt(v), eps1) as 1 / sqrt(max(v, eps1^2)); a NaN estimate stays NaN */
#define INV_ROOT(T, SQRT, v) ((T)1 / SQRT((v) < e2_ ? e2_ : (v)))
/* the mean of g^2 over `count` elements from its sum s, as torch forms it: the norm (in T),
 * squared, over the count */
#define MEAN_SQ(T, s, count) ((T)sqrt(s) * (T)sqrt(s) / (T)(count))

/* the partials each thread leaves for the others: one cache line per thread */
#define PAD 8
enum { P2, U2, RV };

/* the sum of every thread's partial `slot`, in thread order (read after a barrier) */
static double total(const double *part, int nth, int slot) {
  double s = 0;
  for (int t = 0; t < nth; t++) s += part[t * PAD + slot];
  return s;
}

/* the step the multi-tensor form takes, formed as it does in double: alpha = max(eps2,
 * RMS(param)) rho over max(1, RMS(update) / d), from the two norms (rounded to T as torch's
 * are). Python's max keeps its first argument unless the second is larger: a NaN RMS
 * gives eps2 and 1. */
static double step_size(double p_norm, double u_norm, int64_t n, double rho,
                        const adafactor_opts *o) {
  const double root_n = sqrt((double)n);
  const double rms = p_norm / root_n, clip = u_norm / (root_n * o->d);
  const double alpha = (rms > o->eps2 ? rms : o->eps2) * rho;
  return -alpha / (clip > 1.0 ? clip : 1.0);
}

/* this thread's fixed share [lo, hi) of `count` items */
#define CHUNK(lo, hi, count)                                                                \
  const int64_t lo = (count) * tid / nth, hi = (count) * (tid + 1) / nth;

/* ------------------------------------------------------------------ not factored */

#define VECTOR_SWEEP1(T, SQRT, LOW)                                                         \
  _Pragma("omp simd reduction(+ : p2, u2)") for (int64_t i = lo; i < hi; i++) {           \
    const T pi = pp[i], gi = GRAD(gp, i);                                                  \
    const T vi = LERP(vp[i], gi * gi, w_, LOW);                                            \
    const T ui = gi * INV_ROOT(T, SQRT, vi);                                               \
    vp[i] = vi;                                                                            \
    p2 += (double)pi * pi;                                                                 \
    u2 += (double)ui * ui;                                                                 \
  }

#define VECTOR(T, SQRT)                                                                     \
  {                                                                                        \
    T *vp = (T *)var[j];                                                                   \
    CHUNK(lo, hi, nn)                                                                      \
    double p2 = 0, u2 = 0;                                                                 \
    if (w_ < (T)0.5) { VECTOR_SWEEP1(T, SQRT, 1) } else { VECTOR_SWEEP1(T, SQRT, 0) }      \
    mine[P2] = p2;                                                                         \
    mine[U2] = u2;                                                                         \
    _Pragma("omp barrier");                                                                \
    const T s_ = (T)step_size((T)sqrt(total(part, nth, P2)), (T)sqrt(total(part, nth, U2)), \
                              nn, rho[j], o);                                              \
    _Pragma("omp simd") for (int64_t i = lo; i < hi; i++) {                                \
      const T ui = gp[i] * sign * INV_ROOT(T, SQRT, vp[i]);                                \
      pp[i] = pp[i] * shrink_ + s_ * ui;                                                   \
    }                                                                                      \
  }

/* ------------------------------------------------------------------------ factored
 * A tensor of B matrices of R x C: row_var holds B x R row means, col_var B x C column
 * means, mean[b] the clamped mean of matrix b's new row means (the estimate's divisor). */

/* sweep 1 over one row: g^2 summed into the row's mean (and its moving average) and into
 * the column sums acc; p^2 into p2 */
#define ROW_SWEEP1(T, row)                                                                  \
  {                                                                                        \
    const T *prow = pp + (row) * C;                                                        \
    T *grow = gp + (row) * C;                                                              \
    double s = 0, q = 0;                                                                   \
    _Pragma("omp simd reduction(+ : s, q)") for (int64_t c = 0; c < C; c++) {              \
      const T gi = GRAD(grow, c);                                                          \
      const double g2 = (double)gi * gi;                                                   \
      s += g2;                                                                             \
      acc[c] += g2;                                                                        \
      q += (double)prow[c] * prow[c];                                                      \
    }                                                                                      \
    p2 += q;                                                                               \
    rvp[row] = LERP(rvp[row], MEAN_SQ(T, s, C), w_, low);                                  \
    rv_sum += rvp[row];                                                                    \
  }

#define COL_UPDATE(T, bb, c, s) cvp[(bb) * C + (c)] = LERP(cvp[(bb) * C + (c)], MEAN_SQ(T, s, R), w_, low);
#define CLAMPED_MEAN(T, sum) ((T)((sum) / R) < e1_ ? e1_ : (T)((sum) / R))

/* the estimate's inverse root for element (row, c) and its update */
#define FACTORED_U(T, SQRT, c) (grow[c] * sign * INV_ROOT(T, SQRT, r_ * crow[c] / m_))

#define FACTORED(T, SQRT)                                                                   \
  {                                                                                        \
    T *rvp = (T *)rv[j], *cvp = (T *)cv[j];                                                \
    double *acc = col + (int64_t)tid * cmax, *mean = means + par * bmax;                   \
    double p2 = 0;                                                                         \
    if (B >= nth) { /* whole matrices per thread */                                        \
      CHUNK(lo, hi, B)                                                                     \
      for (int64_t bb = lo; bb < hi; bb++) {                                               \
        double rv_sum = 0;                                                                 \
        for (int64_t c = 0; c < C; c++) acc[c] = 0;                                        \
        for (int64_t r = 0; r < R; r++) ROW_SWEEP1(T, bb * R + r)                          \
        for (int64_t c = 0; c < C; c++) COL_UPDATE(T, bb, c, acc[c])                       \
        mean[bb] = CLAMPED_MEAN(T, rv_sum);                                                \
      }                                                                                    \
    } else { /* few matrices: each split by rows, the column sums added up after */        \
      for (int64_t bb = 0; bb < B; bb++) {                                                 \
        double rv_sum = 0;                                                                 \
        for (int64_t c = 0; c < C; c++) acc[c] = 0;                                        \
        CHUNK(lo, hi, R)                                                                   \
        for (int64_t r = lo; r < hi; r++) ROW_SWEEP1(T, bb * R + r)                        \
        mine[RV] = rv_sum;                                                                 \
        _Pragma("omp barrier");                                                            \
        if (tid == 0) mean[bb] = CLAMPED_MEAN(T, total(part, nth, RV));                    \
        CHUNK(clo, chi, C)                                                                 \
        for (int64_t c = clo; c < chi; c++) {                                              \
          double s = 0;                                                                    \
          for (int t = 0; t < nth; t++) s += col[(int64_t)t * cmax + c];                   \
          COL_UPDATE(T, bb, c, s)                                                          \
        }                                                                                  \
        _Pragma("omp barrier");                                                            \
      }                                                                                    \
    }                                                                                      \
    mine[P2] = p2;                                                                         \
    _Pragma("omp barrier");                                                                \
    CHUNK(lo, hi, B * R)                                                                   \
    double u2 = 0;                                                                         \
    for (int64_t row = lo; row < hi; row++) {                                              \
      const int64_t bb = row / R;                                                          \
      const T r_ = rvp[row], m_ = (T)mean[bb], *crow = cvp + bb * C, *grow = gp + row * C; \
      _Pragma("omp simd reduction(+ : u2)") for (int64_t c = 0; c < C; c++) {              \
        const T ui = FACTORED_U(T, SQRT, c);                                               \
        u2 += (double)ui * ui;                                                             \
      }                                                                                    \
    }                                                                                      \
    mine[U2] = u2;                                                                         \
    _Pragma("omp barrier");                                                                \
    const T s_ = (T)step_size((T)sqrt(total(part, nth, P2)), (T)sqrt(total(part, nth, U2)), \
                              nn, rho[j], o);                                              \
    for (int64_t row = lo; row < hi; row++) {                                              \
      const int64_t bb = row / R;                                                          \
      const T r_ = rvp[row], m_ = (T)mean[bb], *crow = cvp + bb * C, *grow = gp + row * C; \
      T *prow = pp + row * C;                                                              \
      _Pragma("omp simd") for (int64_t c = 0; c < C; c++) {                                \
        prow[c] = prow[c] * shrink_ + s_ * FACTORED_U(T, SQRT, c);                         \
      }                                                                                    \
    }                                                                                      \
  }

/* Returns 0, or 1 when the scratch memory could not be had (nothing is written then).
 * A tensor whose tables or dims do not fit is passed over: the caller never sends one. */
#define DEFINE_ADAFACTOR(T, SQRT, NAME)                                                    \
  int NAME(const batch_t *b, const adafactor_opts *o) {                                   \
    const int64_t k = b->k, *n = b->n, *dims = o->dims;                                    \
    const int scaled = b->grad_scale != 0;                                                 \
    const T scale_ = (T)b->grad_scale, sign = o->maximize ? -1 : 1;                        \
    const T e1_ = (T)o->eps1, e2_ = (T)o->eps1sq, shrink_ = (T)o->shrink;                  \
    void **p = b->t[0], **g = b->t[1], **rv = b->t[2], **cv = b->t[3], **var = b->t[4];    \
    const double *w = b->per[0], *rho = b->per[1];                                         \
    if (k <= 0 || !p || !g || !w || !rho || !dims) return 0;                               \
    int64_t cmax = 1, bmax = 1;                                                            \
    for (int64_t j = 0; j < k; j++) {                                                      \
      const int64_t R = dims[2 * j], C = dims[2 * j + 1];                                  \
      if (R > 0 && C > 0) {                                                                \
        cmax = C > cmax ? C : cmax;                                                        \
        bmax = n[j] / (R * C) > bmax ? n[j] / (R * C) : bmax;                              \
      }                                                                                    \
    }                                                                                      \
    const int nt = MAX_THREADS;                                                            \
    double *scratch = calloc((size_t)(2 * nt * PAD + 2 * bmax + nt * cmax), sizeof(double)); \
    if (!scratch) return 1;                                                                \
    double *parts = scratch, *means = parts + 2 * nt * PAD, *col = means + 2 * bmax;       \
    _Pragma("omp parallel num_threads(nt)") {                                              \
      const int tid = THREAD_ID, nth = THREADS;                                            \
      int par = 0; /* partials alternate between two sets: no barrier after sweep 3 */     \
      for (int64_t j = 0; j < k; j++) {                                                    \
        const int64_t nn = n[j], R = dims[2 * j], C = dims[2 * j + 1];                     \
        const int factored = R > 0 && C > 0;                                               \
        if (nn <= 0 || !p[j] || !g[j]) continue;                                           \
        if (factored ? !rv || !cv || !rv[j] || !cv[j] || nn % (R * C) : !var || !var[j])  \
          continue;                                                                        \
        const int64_t B = factored ? nn / (R * C) : 0;                                     \
        double *part = parts + par * nt * PAD, *mine = part + tid * PAD;                   \
        T *pp = (T *)p[j], *gp = (T *)g[j];                                                \
        const T w_ = (T)w[j];                                                              \
        const int low = w_ < (T)0.5;                                                       \
        if (factored) FACTORED(T, SQRT) else VECTOR(T, SQRT)                               \
        par ^= 1;                                                                          \
      }                                                                                    \
    }                                                                                      \
    free(scratch);                                                                         \
    return 0;                                                                              \
  }

DEFINE_ADAFACTOR(float, sqrtf, adafactor_f32)
DEFINE_ADAFACTOR(double, sqrt, adafactor_f64)
