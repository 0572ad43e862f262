/* reimpl's one-pass CPU kernels for the pointwise losses (MSE, smooth L1, Huber), forward
 * and backward; built into one library with cpu_fused.c (the optimizer kernels). The caller
 * has checked every operand (same shape and dtype, contiguous, on the CPU).
 */
#include <math.h>
#include <stdint.h>

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
