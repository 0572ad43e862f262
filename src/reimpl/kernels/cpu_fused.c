/* reimpl's one-pass CPU kernels: the fused optimizer updates (a whole list of tensors per
 * call) and, at the end, the pointwise losses.
 *
 * Each function takes k tensors as arrays of data pointers and sizes (all contiguous, one
 * dtype), plus the scalars the caller (cpu_fused.py) has formed in double precision: the
 * per-tensor step-dependent ones (bias corrections, Adagrad's decayed lr) as arrays, the
 * 1 - beta style weights as numbers (1 - 0.999999f in float would be off by 1%). The
 * element update is the same formula as the multi-tensor path in reimpl/optim/<name>.py.
 *
 * One OpenMP parallel region covers all k tensors; within it each tensor's elements are
 * split over the threads with no barrier in between. The options are hoisted out of the
 * element loops (one loop body per combination, picked once per call), so every loop is a
 * straight vectorizable body: maximize is a sign (exact), decoupled decay a factor.
 */
#include <math.h>
#include <stdint.h>

#define ELEMENTS _Pragma("omp for simd schedule(static) nowait") for (int64_t i = 0; i < nn; i++)

/* torch's lerp: a + w (b - a) for w < 1/2, b - (b - a)(1 - w) otherwise */
#define LERP(a, b, w, LOW) ((LOW) ? (a) + (w) * ((b) - (a)) : (b) - ((b) - (a)) * (1 - (w)))

/* ----------------------------------------------------------------------------- Adam(W) */

#define ADAM_BODY(T, SQRT, COUPLED, AMSGRAD, LOW)                                           \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *mp = (T *)m[j], *vp = (T *)v[j];                                   \
    const T *gp = (const T *)g[j];                                                         \
    T *xp = AMSGRAD ? (T *)vmax[j] : 0;                                                    \
    const T ss = (T)step_size[j], bc = (T)bc2_sqrt[j];                                     \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = gp[i] * sign;                                                                 \
      if (COUPLED) gi += wd_ * pp[i];                                                      \
      T mi = LERP(mp[i], gi, w1_, LOW);                                                    \
      T vi = vp[i] * b2_ + w2_ * gi * gi;                                                  \
      mp[i] = mi;                                                                          \
      vp[i] = vi;                                                                          \
      if (AMSGRAD) { vi = xp[i] > vi ? xp[i] : vi; xp[i] = vi; }                           \
      pp[i] = pp[i] * shrink_ - ss * (mi / (SQRT(vi) / bc + eps_));                        \
    }                                                                                      \
  }

#define ADAM_LOW(T, SQRT, COUPLED, AMSGRAD)                                                 \
  if (w1_ < (T)0.5) { ADAM_BODY(T, SQRT, COUPLED, AMSGRAD, 1) }                            \
  else { ADAM_BODY(T, SQRT, COUPLED, AMSGRAD, 0) }

#define DEFINE_ADAM(T, SQRT, NAME)                                                          \
  void NAME(int64_t k, void **p, void **g, void **m, void **v, void **vmax,                \
            const int64_t *n, const double *step_size, const double *bc2_sqrt, double w1,  \
            double b2, double w2, double eps, double wd, double shrink, int maximize,      \
            int decoupled, int amsgrad) {                                                  \
    const T sign = maximize ? -1 : 1, w1_ = w1, b2_ = b2, w2_ = w2, eps_ = eps, wd_ = wd;  \
    const T shrink_ = (decoupled && wd != 0) ? (T)shrink : 1;                              \
    const int coupled = !decoupled && wd != 0;                                             \
    _Pragma("omp parallel") {                                                              \
      if (coupled) {                                                                       \
        if (amsgrad) { ADAM_LOW(T, SQRT, 1, 1) } else { ADAM_LOW(T, SQRT, 1, 0) }          \
      } else {                                                                             \
        if (amsgrad) { ADAM_LOW(T, SQRT, 0, 1) } else { ADAM_LOW(T, SQRT, 0, 0) }          \
      }                                                                                    \
    }                                                                                      \
  }

/* ----------------------------------------------------------------------------- SGD */

/* MODE 0: no momentum; 1: momentum, buffer created this step (= d); 2: momentum */
#define SGD_BODY(T, DECAY, MODE, NESTEROV)                                                  \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *bp = MODE ? (T *)buf[j] : 0;                                       \
    const T *gp = (const T *)g[j];                                                         \
    const int64_t nn = n[j];                                                               \
    if (MODE && (first[j] != 0) != (MODE == 1)) continue;                                  \
    ELEMENTS {                                                                             \
      T gi = gp[i] * sign;                                                                 \
      if (DECAY) gi += wd_ * pp[i];                                                        \
      if (MODE) {                                                                          \
        T bi = MODE == 1 ? gi : bp[i] * mom_ + undamped_ * gi;                             \
        bp[i] = bi;                                                                        \
        gi = NESTEROV ? gi + mom_ * bi : bi;                                               \
      }                                                                                    \
      pp[i] -= lr_ * gi;                                                                   \
    }                                                                                      \
  }

#define SGD_MOM(T, DECAY)                                                                   \
  if (!buf) { SGD_BODY(T, DECAY, 0, 0) }                                                   \
  else if (nesterov) { SGD_BODY(T, DECAY, 1, 1) SGD_BODY(T, DECAY, 2, 1) }                 \
  else { SGD_BODY(T, DECAY, 1, 0) SGD_BODY(T, DECAY, 2, 0) }

#define DEFINE_SGD(T, NAME)                                                                 \
  void NAME(int64_t k, void **p, void **g, void **buf, const int64_t *n,                   \
            const int32_t *first, double lr, double wd, double momentum, double undamped,  \
            int nesterov, int maximize) {                                                  \
    const T sign = maximize ? -1 : 1, lr_ = lr, wd_ = wd, mom_ = momentum;                 \
    const T undamped_ = undamped;                                                          \
    _Pragma("omp parallel") {                                                              \
      if (wd != 0) { SGD_MOM(T, 1) } else { SGD_MOM(T, 0) }                                \
    }                                                                                      \
  }

/* ----------------------------------------------------------------------------- Adagrad */

#define ADAGRAD_BODY(T, SQRT, DECAY)                                                        \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *sp = (T *)sum[j];                                                  \
    const T *gp = (const T *)g[j];                                                         \
    const T c = (T)clr[j];                                                                 \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = gp[i] * sign;                                                                 \
      if (DECAY) gi += wd_ * pp[i];                                                        \
      T si = sp[i] + gi * gi;                                                              \
      sp[i] = si;                                                                          \
      pp[i] -= c * (gi / (SQRT(si) + eps_));                                               \
    }                                                                                      \
  }

#define DEFINE_ADAGRAD(T, SQRT, NAME)                                                       \
  void NAME(int64_t k, void **p, void **g, void **sum, const int64_t *n, const double *clr, \
            double wd, double eps, int maximize) {                                         \
    const T sign = maximize ? -1 : 1, wd_ = wd, eps_ = eps;                                \
    _Pragma("omp parallel") {                                                              \
      if (wd != 0) { ADAGRAD_BODY(T, SQRT, 1) } else { ADAGRAD_BODY(T, SQRT, 0) }          \
    }                                                                                      \
  }

/* ----------------------------------------------------------------------------- RMSprop */

#define RMSPROP_BODY(T, SQRT, DECAY, CENTERED, MOMENTUM, LOW)                               \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *qp = (T *)sq[j];                                                   \
    T *ap = CENTERED ? (T *)gavg[j] : 0, *bp = MOMENTUM ? (T *)buf[j] : 0;                 \
    const T *gp = (const T *)g[j];                                                         \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = gp[i] * sign;                                                                 \
      if (DECAY) gi += wd_ * pp[i];                                                        \
      T si = qp[i] * alpha_ + w_ * gi * gi;                                                \
      qp[i] = si;                                                                          \
      T avg;                                                                               \
      if (CENTERED) {                                                                      \
        T ai = LERP(ap[i], gi, w_, LOW);                                                   \
        ap[i] = ai;                                                                        \
        avg = SQRT(si - ai * ai) + eps_;                                                   \
      } else {                                                                             \
        avg = SQRT(si) + eps_;                                                             \
      }                                                                                    \
      if (MOMENTUM) {                                                                      \
        T bi = bp[i] * mom_ + gi / avg;                                                    \
        bp[i] = bi;                                                                        \
        pp[i] -= lr_ * bi;                                                                 \
      } else {                                                                             \
        pp[i] -= lr_ * (gi / avg);                                                         \
      }                                                                                    \
    }                                                                                      \
  }

#define RMSPROP_LOW(T, SQRT, DECAY, CENTERED, MOMENTUM)                                     \
  if (w_ < (T)0.5) { RMSPROP_BODY(T, SQRT, DECAY, CENTERED, MOMENTUM, 1) }                 \
  else { RMSPROP_BODY(T, SQRT, DECAY, CENTERED, MOMENTUM, 0) }

#define RMSPROP_OPTS(T, SQRT, DECAY)                                                        \
  if (gavg) {                                                                              \
    if (buf) { RMSPROP_LOW(T, SQRT, DECAY, 1, 1) } else { RMSPROP_LOW(T, SQRT, DECAY, 1, 0) } \
  } else {                                                                                 \
    if (buf) { RMSPROP_LOW(T, SQRT, DECAY, 0, 1) } else { RMSPROP_LOW(T, SQRT, DECAY, 0, 0) } \
  }

#define DEFINE_RMSPROP(T, SQRT, NAME)                                                       \
  void NAME(int64_t k, void **p, void **g, void **sq, void **gavg, void **buf,             \
            const int64_t *n, double lr, double alpha, double w, double eps, double wd,    \
            double momentum, int maximize) {                                               \
    const T sign = maximize ? -1 : 1, lr_ = lr, alpha_ = alpha, w_ = w, eps_ = eps;        \
    const T wd_ = wd, mom_ = momentum;                                                     \
    _Pragma("omp parallel") {                                                              \
      if (wd != 0) { RMSPROP_OPTS(T, SQRT, 1) } else { RMSPROP_OPTS(T, SQRT, 0) }          \
    }                                                                                      \
  }

DEFINE_ADAM(float, sqrtf, adam_f32)
DEFINE_ADAM(double, sqrt, adam_f64)
DEFINE_SGD(float, sgd_f32)
DEFINE_SGD(double, sgd_f64)
DEFINE_ADAGRAD(float, sqrtf, adagrad_f32)
DEFINE_ADAGRAD(double, sqrt, adagrad_f64)
DEFINE_RMSPROP(float, sqrtf, rmsprop_f32)
DEFINE_RMSPROP(double, sqrt, rmsprop_f64)

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
  double NAME_F(int kind, const T *x, const T *t, T *out, int64_t n, double b) {           \
    const T b_ = b, half = 0.5; /* arithmetic in T, as torch's kernels */                  \
    double sum = 0;                                                                        \
    if (kind == 0) { PW_FWD_LOOP(T, 0) }                                                   \
    else if (kind == 1) { PW_FWD_LOOP(T, 1) }                                              \
    else { PW_FWD_LOOP(T, 2) }                                                             \
    return sum;                                                                            \
  }                                                                                        \
  void NAME_B(int kind, const T *x, const T *t, const T *g, T *gx, T *gt, int64_t n,       \
              double b, double scale) {                                                    \
    const T b_ = b, s_ = scale;                                                            \
    if (kind == 0) { PW_BWD(T, 0) } else if (kind == 1) { PW_BWD(T, 1) } else { PW_BWD(T, 2) } \
  }

DEFINE_POINTWISE(float, pointwise_fwd_f32, pointwise_bwd_f32)
DEFINE_POINTWISE(double, pointwise_fwd_f64, pointwise_bwd_f64)
