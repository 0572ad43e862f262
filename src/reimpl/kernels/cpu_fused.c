/* reimpl's fused CPU optimizer updates: one pass over memory per tensor per step.
 *
 * Each function updates one contiguous tensor in place; the caller (cpu_fused.py) has
 * already turned the step count into the scalars below, and formed 1 - beta style weights
 * in double precision (1 - 0.999999f in float would be off by 1%). The update is the same
 * formula as the multi-tensor path in reimpl/optim/<name>.py, written once per dtype by
 * the DEFINE_* macros. OpenMP splits the elements over threads.
 */
#include <math.h>
#include <stdint.h>

/* torch's lerp: self + w (end - self), or end - (end - self)(1 - w) when w >= 1/2 */
#define LERP(a, b, w) ((w) < 0.5 ? (a) + (w) * ((b) - (a)) : (b) - ((b) - (a)) * (1 - (w)))

/* One Adam loop; the options are hoisted out of it (below) so the loop stays a straight
 * vectorizable body. maximize is a sign (exact), decoupled decay a factor (exact when 1). */
#define ADAM_LOOP(T, SQRT, COUPLED, AMSGRAD, LERP_LOW)                                      \
  _Pragma("omp parallel for simd schedule(static)")                                        \
  for (int64_t i = 0; i < n; i++) {                                                        \
    T pi = p[i] * shrink;                                                                  \
    T gi = g[i] * sign;                                                                    \
    if (COUPLED) gi += wd * p[i];                                                          \
    T mi = LERP_LOW ? m[i] + w1 * (gi - m[i]) : gi - (gi - m[i]) * (1 - w1);               \
    T vi = v[i] * b2 + w2 * gi * gi;                                                       \
    m[i] = mi;                                                                             \
    v[i] = vi;                                                                             \
    if (AMSGRAD) { vi = vmax[i] > vi ? vmax[i] : vi; vmax[i] = vi; }                       \
    p[i] = pi - step_size * (mi / (SQRT(vi) / bc2_sqrt + eps));                            \
  }

#define ADAM_LERP(T, SQRT, COUPLED, AMSGRAD)                                                \
  if (w1 < 0.5) { ADAM_LOOP(T, SQRT, COUPLED, AMSGRAD, 1) }                                \
  else { ADAM_LOOP(T, SQRT, COUPLED, AMSGRAD, 0) }

#define DEFINE_ADAM(T, SQRT, NAME)                                                          \
  void NAME(T *p, const T *g, T *m, T *v, T *vmax, int64_t n, T w1, T b2, T w2, T eps,      \
            T wd, T shrink_if_decoupled, T step_size, T bc2_sqrt, int maximize,            \
            int decoupled) {                                                               \
    const T sign = maximize ? -1 : 1;                                                      \
    const T shrink = (decoupled && wd != 0) ? shrink_if_decoupled : 1;                     \
    const int coupled = !decoupled && wd != 0;                                             \
    if (coupled) {                                                                         \
      if (vmax) { ADAM_LERP(T, SQRT, 1, 1) } else { ADAM_LERP(T, SQRT, 1, 0) }             \
    } else {                                                                               \
      if (vmax) { ADAM_LERP(T, SQRT, 0, 1) } else { ADAM_LERP(T, SQRT, 0, 0) }             \
    }                                                                                      \
  }

#define DEFINE_SGD(T, NAME)                                                                 \
  void NAME(T *p, const T *g, T *buf, int64_t n, T lr, T wd, T momentum, T undamped,       \
            int nesterov, int maximize, int first) {                                       \
    _Pragma("omp parallel for simd schedule(static)")                                      \
    for (int64_t i = 0; i < n; i++) {                                                      \
      T gi = maximize ? -g[i] : g[i];                                                      \
      if (wd != 0) gi += wd * p[i];                                                        \
      if (buf) {                                                                           \
        T bi = first ? gi : buf[i] * momentum + undamped * gi;                             \
        buf[i] = bi;                                                                       \
        gi = nesterov ? gi + momentum * bi : bi;                                           \
      }                                                                                    \
      p[i] -= lr * gi;                                                                     \
    }                                                                                      \
  }

#define DEFINE_ADAGRAD(T, SQRT, NAME)                                                       \
  void NAME(T *p, const T *g, T *sum, int64_t n, T clr, T wd, T eps, int maximize) {       \
    _Pragma("omp parallel for simd schedule(static)")                                      \
    for (int64_t i = 0; i < n; i++) {                                                      \
      T gi = maximize ? -g[i] : g[i];                                                      \
      if (wd != 0) gi += wd * p[i];                                                        \
      T si = sum[i] + gi * gi;                                                             \
      sum[i] = si;                                                                         \
      p[i] -= clr * (gi / (SQRT(si) + eps));                                               \
    }                                                                                      \
  }

#define DEFINE_RMSPROP(T, SQRT, NAME)                                                       \
  void NAME(T *p, const T *g, T *sq, T *gavg, T *buf, int64_t n, T lr, T alpha, T w,      \
            T eps, T wd, T momentum, int maximize) {                                       \
    _Pragma("omp parallel for simd schedule(static)")                                      \
    for (int64_t i = 0; i < n; i++) {                                                      \
      T gi = maximize ? -g[i] : g[i];                                                      \
      if (wd != 0) gi += wd * p[i];                                                        \
      T si = sq[i] * alpha + w * gi * gi;                                                  \
      sq[i] = si;                                                                          \
      T avg;                                                                               \
      if (gavg) {                                                                          \
        T ai = LERP(gavg[i], gi, w);                                                       \
        gavg[i] = ai;                                                                      \
        avg = SQRT(si - ai * ai) + eps;                                                    \
      } else {                                                                             \
        avg = SQRT(si) + eps;                                                              \
      }                                                                                    \
      if (buf) {                                                                           \
        T bi = buf[i] * momentum + gi / avg;                                               \
        buf[i] = bi;                                                                       \
        p[i] -= lr * bi;                                                                   \
      } else {                                                                             \
        p[i] -= lr * (gi / avg);                                                           \
      }                                                                                    \
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
