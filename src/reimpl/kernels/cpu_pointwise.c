/* reimpl's one-pass CPU kernels for the pointwise losses (MSE, smooth L1, Huber) and for
 * BCE with logits, forward and backward; built into one library with cpu_fused.c (the
 * optimizer kernels). The caller has checked every operand (same shape and dtype,
 * contiguous, on the CPU; for BCE the gate in cpu_bce.py).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* pointwise losses: kind 0 MSE, 1 smooth L1, 2 Huber */
typedef struct {
  const void *x, *t, *g; /* g: per-element upstream gradient, or NULL (then scale) */
  void *out, *gx, *gt;   /* out: per-element loss, or NULL (then the sum is returned) */
  int64_t n;
  int32_t kind;
  double b, scale;
} pointwise_t;

/* ----------------------------------------------------------------- pointwise losses
 * kind 0: MSE d^2; 1: smooth L1 (threshold b); 2: Huber (threshold b); d = x - t.
 * Forward: with out, writes the per-element loss; without, returns the sum (in double).
 * Backward: gx = dl/dd * (scale, or g[i] per element); gt = -gx when asked for.
 * A nan difference stays nan through both (comparisons are false for nan).
 */
#define LOSS_OF(d, ad, kind, b)                                                             \
  ((kind) == 0 ? (d) * (d)                                                                 \
   : (kind) == 1 ? ((ad) < (b) ? half * (ad) * (ad) / (b) : (ad) - half * (b))              \
                 : ((ad) < (b) ? half * (ad) * (ad) : (b) * ((ad) - half * (b))))

/* KIND is a constant in each loop below, so each loop is straight code */
#define PW_FWD_LOOP(T, KIND)                                                                \
  if (out) {                                                                               \
    _Pragma("omp parallel for simd schedule(static)")                                      \
    for (int64_t i = 0; i < n; i++) {                                                      \
      T d = x[i] - t[i], ad = d < 0 ? -d : d;                                              \
      out[i] = LOSS_OF(d, ad, KIND, b_);                                                   \
    }                                                                                      \
  } else {                                                                                 \
    _Pragma("omp parallel for simd schedule(static) reduction(+ : sum)")                   \
    for (int64_t i = 0; i < n; i++) {                                                      \
      T d = x[i] - t[i], ad = d < 0 ? -d : d;                                              \
      sum += (double)(T)LOSS_OF(d, ad, KIND, b_);                                          \
    }                                                                                      \
  }

#define PW_SLOPE(T, KIND, d)                                                                \
  ((KIND) == 0 ? 2 * (d)                                                                   \
   : (KIND) == 1 ? ((d) / b_ <= -1 ? (T)-1 : ((d) / b_ >= 1 ? (T)1 : (d) / b_))           \
                 : ((d) <= -b_ ? -b_ : ((d) >= b_ ? b_ : (d))))

#define PW_BWD_LOOP(T, KIND, PER_ELEMENT)                                                   \
  _Pragma("omp parallel for simd schedule(static)")                                        \
  for (int64_t i = 0; i < n; i++) {                                                        \
    T d = x[i] - t[i];                                                                     \
    T gi = PW_SLOPE(T, KIND, d) * (PER_ELEMENT ? g[i] : s_);                               \
    gx[i] = gi;                                                                            \
    if (gt) gt[i] = -gi;                                                                   \
  }

#define PW_BWD(T, KIND) if (g) { PW_BWD_LOOP(T, KIND, 1) } else { PW_BWD_LOOP(T, KIND, 0) }

#define DEFINE_POINTWISE(T, NAME_F, NAME_B)                                                 \
  double NAME_F(const pointwise_t *a) {                                                    \
    const T *x = (const T *)a->x, *t = (const T *)a->t;                                    \
    T *out = (T *)a->out;                                                                  \
    const int64_t n = a->n;                                                                \
    const int kind = a->kind;                                                              \
    const T b_ = a->b, half = 0.5; /* arithmetic in T, as torch's kernels */               \
    double sum = 0;                                                                        \
    if (kind == 0) { PW_FWD_LOOP(T, 0) }                                                   \
    else if (kind == 1) { PW_FWD_LOOP(T, 1) }                                              \
    else { PW_FWD_LOOP(T, 2) }                                                             \
    return sum;                                                                            \
  }                                                                                        \
  void NAME_B(const pointwise_t *a) {                                                      \
    const T *x = (const T *)a->x, *t = (const T *)a->t, *g = (const T *)a->g;              \
    T *gx = (T *)a->gx, *gt = (T *)a->gt;                                                  \
    const int64_t n = a->n;                                                                \
    const int kind = a->kind;                                                              \
    const T b_ = a->b, s_ = a->scale;                                                      \
    if (kind == 0) { PW_BWD(T, 0) } else if (kind == 1) { PW_BWD(T, 1) } else { PW_BWD(T, 2) } \
  }

DEFINE_POINTWISE(float, pointwise_fwd_f32, pointwise_bwd_f32)
DEFINE_POINTWISE(double, pointwise_fwd_f64, pointwise_bwd_f64)

/* ----------------------------------------------------------------- BCE with logits
 * l = w [(1 - t) x - (1 + (p - 1) t) log_sigmoid(x)],  log_sigmoid(x) = min(x, 0) - log1p(e^-|x|)
 * dl/dx = g w [((p t + 1) - t) sigmoid(x) - p t] (/ n for a mean)   (without p: sigmoid(x) - t)
 * dl/dt = g w [log_sigmoid(-x) - p log_sigmoid(x)] (/ n)            (without p: -x)
 * sigmoid(x) = 1 / (1 + e^-x). Each step is rounded in T in the order torch's CPU ops take
 * them (the pos_weight factor, then the product, then (1 - t) x minus it, then the weight;
 * backward: the upstream gradient, then the weight, then the division by n), so a result
 * differs from torch's only by what e^v and log1p differ by.
 * w and p are periodic: element i reads w[i % w_period] -- period 1 for a scalar, the class
 * count for a per-class vector, n for a full tensor (the binding tiles a short period to a
 * longer one: each inner loop runs to the end of a period, so a short one would be a short
 * loop). A reduced forward sums the losses in double per thread over its contiguous share,
 * then over the threads in thread order, so the sum does not depend on timing; the mean
 * divides that sum by n (torch sums in float: the two agree within float's tolerance).
 * float: e^v and log1p(v) are evaluated in double by the branch-free polynomials below, which
 * the compiler vectorizes (libm's are scalar calls); rounded to float they are within an
 * ulp of the exact value, as torch's vectorized ones are. double: libm.
 */
typedef struct {
  const void *x, *t, *w, *p; /* w, p: NULL when absent */
  const void *g;             /* backward: per-element upstream gradient, or NULL (then scale) */
  void *out;                 /* forward: per-element loss, or NULL (then the sum is returned) */
  void *gx, *gt;             /* backward: gt NULL when the target needs no gradient */
  int64_t n, w_period, p_period;
  int32_t mean; /* backward: divide by n (reduction 'mean') */
  double scale; /* backward with g NULL: the reduced loss's upstream gradient */
} bce_t;

#define BCE_MAX_THREADS 256
#define BCE_GRAIN 32768 /* elements per thread below which more threads cost more than they give */

static int bce_threads(int64_t n) {
  int64_t nt = 1;
#ifdef _OPENMP
  nt = omp_get_max_threads();
#endif
  if (nt > n / BCE_GRAIN) nt = n / BCE_GRAIN;
  return (int)(nt < 1 ? 1 : (nt > BCE_MAX_THREADS ? BCE_MAX_THREADS : nt));
}

/* c ? a : b as a bit select: with a float ternary the compiler keeps a branch (under its
   default trapping-math rules), which stops the loop from being vectorized */
static inline double bce_pick(int c, double a, double b) {
  const uint64_t m = -(uint64_t)c;
  uint64_t ab, bb;
  memcpy(&ab, &a, sizeof ab);
  memcpy(&bb, &b, sizeof bb);
  ab = (ab & m) | (bb & ~m);
  memcpy(&a, &ab, sizeof a);
  return a;
}

/* e^y, relative error about 1e-10 (far below float's half ulp); nan stays nan, and the
   clamps give 0 and inf once rounded to float. y = k ln2 + r, |r| <= ln2 / 2; 2^k is built
   in the exponent bits from k, which the 1.5 * 2^52 shift leaves in the low bits. */
static inline double bce_exp(double y) {
  y = bce_pick(y < -120, -120, bce_pick(y > 100, 100, y));
  const double shift = 0x1.8p52;
  double k = y * 0x1.71547652b82fep0 + shift;
  uint64_t kb;
  memcpy(&kb, &k, sizeof kb);
  k -= shift;
  const double r = y - k * 0x1.62e42fefa39efp-1;
  double q = 1.0 / 40320;
  q = q * r + 1.0 / 5040;
  q = q * r + 1.0 / 720;
  q = q * r + 1.0 / 120;
  q = q * r + 1.0 / 24;
  q = q * r + 1.0 / 6;
  q = q * r + 0.5;
  q = q * r + 1;
  q = q * r + 1;
  const uint64_t sb = (kb + 1023) << 52;
  double s;
  memcpy(&s, &sb, sizeof s);
  return q * s;
}

/* log1p(z) for z in [0, 1] (or nan): 2 atanh(u), u = z / (2 + z) <= 1/3, its series to u^17
   (truncation below 2e-10 relative); no cancellation for a small z. */
static inline double bce_log1p(double z) {
  const double u = z / (2 + z), u2 = u * u;
  double q = 1.0 / 17;
  q = q * u2 + 1.0 / 15;
  q = q * u2 + 1.0 / 13;
  q = q * u2 + 1.0 / 11;
  q = q * u2 + 1.0 / 9;
  q = q * u2 + 1.0 / 7;
  q = q * u2 + 1.0 / 5;
  q = q * u2 + 1.0 / 3;
  q = q * u2 + 1;
  return 2 * u * q;
}

/* the run from element i: up to hi, or to where w's or p's period wraps first (HW, HP:
   which are present); *jw, *jp: their phase at i */
static inline int64_t bce_run(const bce_t *a, int64_t i, int64_t hi, int HW, int HP,
                              int64_t *jw, int64_t *jp) {
  int64_t len = hi - i;
  if (HW) {
    *jw = i % a->w_period;
    if (a->w_period - *jw < len) len = a->w_period - *jw;
  }
  if (HP) {
    *jp = i % a->p_period;
    if (a->p_period - *jp < len) len = a->p_period - *jp;
  }
  return len;
}

#define BCE_EXP_f32(v) ((float)bce_exp((double)(v)))
#define BCE_LOG1P_f32(v) ((float)bce_log1p((double)(v)))
#define BCE_EXP_f64(v) exp(v)
#define BCE_LOG1P_f64(v) log1p(v)
/* min(v, 0); a nan v gives 0 (the log1p term beside it is nan then) */
#define BCE_MIN0(T, v) ((T)bce_pick((v) < 0, (double)(v), 0))
#define BCE_ABS(T, v) ((T)fabs((double)(v))) /* exact for float too */
#define BCE_INLINE static inline __attribute__((always_inline))

#ifdef _OPENMP
#define BCE_ID omp_get_thread_num()
#define BCE_NUM omp_get_num_threads()
#else
#define BCE_ID 0
#define BCE_NUM 1
#endif

/* the flags (HW: a weight, HP: a pos_weight, SUM: reduce, PER: per-element upstream
   gradient, GT: the target's gradient) are literals at every call of the inlined run and
   walk functions, so each combination compiles to its own straight vector loop */
#define BCE_FLAGS2(F, A, B, ...)                                                            \
  (A ? (B ? F(__VA_ARGS__, 1, 1) : F(__VA_ARGS__, 1, 0))                                   \
     : (B ? F(__VA_ARGS__, 0, 1) : F(__VA_ARGS__, 0, 0)))

#define DEFINE_BCE(T, SFX)                                                                  \
  /* one run: w and p (when present) already at this run's phase */                        \
  BCE_INLINE double bce_fwd_run_##SFX(const T *x, const T *t, const T *w, const T *p,       \
                                      T *out, int64_t len, int HW, int HP, int SUM) {       \
    double acc = 0;                                                                        \
    _Pragma("omp simd reduction(+ : acc)") for (int64_t k = 0; k < len; k++) {             \
      const T xv = x[k], tv = t[k];                                                        \
      const T z = BCE_EXP_##SFX(-BCE_ABS(T, xv));                                        \
      T ls = BCE_MIN0(T, xv) - BCE_LOG1P_##SFX(z);                                          \
      if (HP) ls = ls * ((p[k] - 1) * tv + 1);                                             \
      T l = (1 - tv) * xv - ls;                                                            \
      if (HW) l = l * w[k];                                                                \
      if (SUM) acc += (double)l;                                                           \
      else out[k] = l;                                                                     \
    }                                                                                      \
    return acc;                                                                            \
  }                                                                                        \
  BCE_INLINE void bce_bwd_run_##SFX(const T *x, const T *t, const T *w, const T *p,         \
                                    const T *g, T sc, T *gx, T *gt, int64_t len,            \
                                    T nT, int PER, int GT, int HW, int HP) {                \
    _Pragma("omp simd") for (int64_t k = 0; k < len; k++) {                                \
      const T xv = x[k], tv = t[k], gv = PER ? g[k] : sc;                                  \
      const T sg = 1 / (1 + BCE_EXP_##SFX(-xv));                                           \
      T d;                                                                                 \
      if (HP) {                                                                            \
        const T pt = p[k] * tv;                                                            \
        d = (pt + 1 - tv) * sg - pt;                                                       \
      } else {                                                                             \
        d = sg - tv;                                                                       \
      }                                                                                    \
      d = d * gv;                                                                          \
      if (HW) d = d * w[k];                                                                \
      gx[k] = d / nT;                                                                      \
      if (GT) {                                                                            \
        T e;                                                                               \
        if (HP) {                                                                          \
          const T l1 = BCE_LOG1P_##SFX(BCE_EXP_##SFX(-BCE_ABS(T, xv)));                  \
          e = (BCE_MIN0(T, -xv) - l1) - (BCE_MIN0(T, xv) - l1) * p[k];                       \
        } else {                                                                           \
          e = -xv;                                                                         \
        }                                                                                  \
        e = e * gv;                                                                        \
        if (HW) e = e * w[k];                                                              \
        gt[k] = e / nT;                                                                     \
      }                                                                                    \
    }                                                                                      \
  }                                                                                        \
  /* [lo, hi) in runs that end where the period of w or p wraps */                         \
  BCE_INLINE double bce_fwd_walk_##SFX(const bce_t *a, int64_t lo, int64_t hi, int SUM,     \
                                       int HW, int HP) {                                   \
    const T *x = (const T *)a->x, *t = (const T *)a->t;                                    \
    const T *w = (const T *)a->w, *p = (const T *)a->p;                                    \
    T *out = (T *)a->out;                                                                  \
    double acc = 0;                                                                        \
    for (int64_t i = lo; i < hi;) {                                                        \
      int64_t jw = 0, jp = 0;                                                              \
      const int64_t len = bce_run(a, i, hi, HW, HP, &jw, &jp);                             \
      acc += bce_fwd_run_##SFX(x + i, t + i, HW ? w + jw : w, HP ? p + jp : p,             \
                               SUM ? out : out + i, len, HW, HP, SUM);                     \
      i += len;                                                                            \
    }                                                                                      \
    return acc;                                                                            \
  }                                                                                        \
  BCE_INLINE void bce_bwd_walk_##SFX(const bce_t *a, int64_t lo, int64_t hi, int PER,       \
                                     int GT, int HW, int HP) {                             \
    const T *x = (const T *)a->x, *t = (const T *)a->t, *g = (const T *)a->g;              \
    const T *w = (const T *)a->w, *p = (const T *)a->p;                                    \
    T *gx = (T *)a->gx, *gt = (T *)a->gt;                                                  \
    /* dividing by 1 is exact: one loop serves 'mean' and the others */                   \
    const T sc = (T)a->scale, nT = a->mean ? (T)a->n : (T)1;                               \
    for (int64_t i = lo; i < hi;) {                                                        \
      int64_t jw = 0, jp = 0;                                                              \
      const int64_t len = bce_run(a, i, hi, HW, HP, &jw, &jp);                             \
      bce_bwd_run_##SFX(x + i, t + i, HW ? w + jw : w, HP ? p + jp : p, PER ? g + i : g,   \
                        sc, gx + i, GT ? gt + i : gt, len, nT, PER, GT, HW, HP);           \
      i += len;                                                                            \
    }                                                                                      \
  }                                                                                        \
  static double bce_fwd_span_##SFX(const bce_t *a, int64_t lo, int64_t hi) {                \
    return a->out ? BCE_FLAGS2(bce_fwd_walk_##SFX, a->w, a->p, a, lo, hi, 0)               \
                  : BCE_FLAGS2(bce_fwd_walk_##SFX, a->w, a->p, a, lo, hi, 1);              \
  }                                                                                        \
  static void bce_bwd_span_##SFX(const bce_t *a, int64_t lo, int64_t hi) {                  \
    if (a->g) {                                                                            \
      if (a->gt) BCE_FLAGS2(bce_bwd_walk_##SFX, a->w, a->p, a, lo, hi, 1, 1);              \
      else BCE_FLAGS2(bce_bwd_walk_##SFX, a->w, a->p, a, lo, hi, 1, 0);                    \
    } else {                                                                               \
      if (a->gt) BCE_FLAGS2(bce_bwd_walk_##SFX, a->w, a->p, a, lo, hi, 0, 1);              \
      else BCE_FLAGS2(bce_bwd_walk_##SFX, a->w, a->p, a, lo, hi, 0, 0);                    \
    }                                                                                      \
  }                                                                                        \
  /* the per-element loss into out, or (out NULL) the sum of the losses */                 \
  double bce_fwd_##SFX(const bce_t *a) {                                                   \
    const int64_t n = a->n;                                                                \
    const int nt = bce_threads(n);                                                         \
    double part[BCE_MAX_THREADS] = {0};                                                    \
    _Pragma("omp parallel num_threads(nt)") {                                              \
      const int id = BCE_ID, m = BCE_NUM;                                                  \
      part[id] = bce_fwd_span_##SFX(a, n * id / m, n * (id + 1) / m);                      \
    }                                                                                      \
    double sum = 0;                                                                        \
    for (int i = 0; i < nt; i++) sum += part[i];                                           \
    return sum;                                                                            \
  }                                                                                        \
  void bce_bwd_##SFX(const bce_t *a) {                                                     \
    const int64_t n = a->n;                                                                \
    const int nt = bce_threads(n);                                                         \
    (void)nt; /* (read only by the OpenMP pragma) */                                       \
    _Pragma("omp parallel num_threads(nt)") {                                              \
      const int id = BCE_ID, m = BCE_NUM;                                                  \
      bce_bwd_span_##SFX(a, n * id / m, n * (id + 1) / m);                                 \
    }                                                                                      \
  }

DEFINE_BCE(float, f32)
DEFINE_BCE(double, f64)
