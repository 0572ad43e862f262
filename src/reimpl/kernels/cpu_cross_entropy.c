/* reimpl's CPU kernel for cross-entropy with class-index targets on (N, C) logits: per row
 * the loss and, when asked, the logits gradient, in two passes over the row plus one
 * rescaling pass over the (cache-resident) output; built into one library with
 * cpu_fused.c. Mirrored by the ctypes structure in cpu_cross_entropy.py, whose caller has
 * checked every operand (dtype, element count, contiguity, storage size).
 *
 * The per-row step of reimpl.nn.functional._cross_entropy_lean (whose docstring has the
 * formulas), with m = max_c x_c, d_c = x_c - m, s = sum_c exp(d_c), k = [t != ignore]:
 *   loss = k [(1 - eps) w_t (log s - d_t) + eps/C (W log s - sum_c w_c d_c)], W = sum w
 *   grad_j = scale k [exp(d_j) ((1 - eps) w_t + eps/C W) / s - (1 - eps) w_t [j = t]
 *                     - eps/C w_j]
 * written over the logits when in place (everything a row needs from x is read before
 * its first write). Working from d rather than x keeps the smoothing term free of the
 * cancellation lse * W - sum w x has at large logits. An ignored row's gradient is still
 * exp(d) * 0, so a non-finite logit there gives nan as torch's does.
 *
 * exp: float rows use a polynomial (Cephes' expf: Cody-Waite reduction, degree-6
 * polynomial, within about 1 ulp) that the compiler vectorizes, where libm's expf is a
 * scalar call per element -- most of the time at C = 1000; double rows use libm's exp.
 * Sums go into LANES partials in T, folded and added into double every CHUNK elements
 * (as in cpu_norm.c); the order depends on C only, never on threads or timing.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
  const void *x;    /* (n, c) logits */
  const int64_t *t; /* (n) targets */
  const void *w;    /* (c) class weights, NULL: all 1 */
  const void *scale; /* 1 or n values (scale_n), NULL when no gradient is wanted */
  void *loss;        /* (n) */
  void *out;         /* (n, c) gradient, NULL: none; may be x itself */
  int64_t n, c, scale_n, ignore_index;
  double eps; /* label smoothing */
} ce_t;

/* below this many elements a call runs on one thread (see cpu_norm.c) */
#define GRAIN 32768
#define LANES 16
#define CHUNK 4096
#define FOLD(p)                                                                            \
  for (int w_ = LANES / 2; w_ > 0; w_ /= 2)                                                \
    for (int j_ = 0; j_ < w_; j_++) p[j_] += p[j_ + w_];

/* e^x for x <= 0 (or nan): below ln(FLT_MIN) the result is 0, where libm gives a
   subnormal (< 1.2e-38); nan stays nan. Integer work is on the bits (no float-to-int
   conversion of a nan), so every lane is defined. */
static inline float exp_f32(float x) {
  const float lo = -87.33654f;
  const float xc = x < lo ? lo : x;
  const float fx = xc * 1.44269504088896341f;
  const float big = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
  const float shifted = fx + big;
  const float n = shifted - big;
  uint32_t bits;
  memcpy(&bits, &shifted, sizeof bits);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * (r * r) + r + 1.0f;
  /* 2^n from the low bits of `shifted` (n in [-126, 0] here, so the exponent is normal) */
  const uint32_t e = (uint32_t)((int32_t)(bits - 0x4B400000u) + 127) << 23;
  float two_n;
  memcpy(&two_n, &e, sizeof two_n);
  return x < lo ? 0.0f : y * two_n;
}

static inline double exp_f64(double x) { return exp(x); }

/* The row's exp pass: s = sum exp(x - m) (stored to o when STORE), and, when SMOOTH,
   *sw = sum w_c (x_c - m) (w NULL: weight 1). Constant flags: each call site is its own
   branch-free loop. */
#define DEFINE_EXP_ROW(T, SFX)                                                             \
  static inline __attribute__((always_inline)) double exp_row_##SFX(                       \
      const T *x, T *o, const T *w, int64_t c, T m, const int STORE, const int SMOOTH,     \
      const int W, double *sw) {                                                           \
    double s = 0, q = 0;                                                                   \
    for (int64_t c0 = 0; c0 < c; c0 += CHUNK) {                                            \
      const int64_t e = c0 + CHUNK < c ? c0 + CHUNK : c;                                   \
      T ps[LANES] = {0}, pq[LANES] = {0};                                                  \
      int64_t i = c0;                                                                      \
      for (; i + LANES <= e; i += LANES) {                                                 \
        for (int j = 0; j < LANES; j++) {                                                  \
          const T d = x[i + j] - m;                                                        \
          const T v = exp_##SFX(d);                                                        \
          if (STORE) o[i + j] = v;                                                         \
          ps[j] += v;                                                                      \
          if (SMOOTH) pq[j] += W ? w[i + j] * d : d;                                       \
        }                                                                                  \
      }                                                                                    \
      for (int j = 0; i + j < e; j++) {                                                    \
        const T d = x[i + j] - m;                                                          \
        const T v = exp_##SFX(d);                                                          \
        if (STORE) o[i + j] = v;                                                           \
        ps[j] += v;                                                                        \
        if (SMOOTH) pq[j] += W ? w[i + j] * d : d;                                         \
      }                                                                                    \
      FOLD(ps)                                                                             \
      s += ps[0];                                                                          \
      if (SMOOTH) {                                                                        \
        FOLD(pq)                                                                           \
        q += pq[0];                                                                        \
      }                                                                                    \
    }                                                                                      \
    *sw = q;                                                                               \
    return s;                                                                              \
  }

/* Row max as `v > m ? v : m` (one vector max instruction; a nan compare keeps either
   operand, which one is irrelevant): a nan logit reaches the loss and every gradient of
   its row through exp(nan - m) in the sum s, whatever m is. (Testing for nan here made
   this pass three times slower than the exp pass.) */
#define DEFINE_ROW_MAX(T, SFX)                                                             \
  static inline T row_max_##SFX(const T *x, int64_t c) {                                   \
    T pm[LANES];                                                                           \
    for (int j = 0; j < LANES; j++) pm[j] = x[0];                                          \
    int64_t i = 0;                                                                         \
    for (; i + LANES <= c; i += LANES)                                                     \
      for (int j = 0; j < LANES; j++) {                                                    \
        const T v = x[i + j];                                                              \
        pm[j] = v > pm[j] ? v : pm[j];                                                     \
      }                                                                                    \
    for (int j = 0; i + j < c; j++) {                                                      \
      const T v = x[i + j];                                                                \
      pm[j] = v > pm[j] ? v : pm[j];                                                       \
    }                                                                                      \
    T m = pm[0];                                                                           \
    for (int j = 1; j < LANES; j++) m = pm[j] > m ? pm[j] : m;                             \
    return m;                                                                              \
  }

/* Returns 0, or 1 + the first row whose target is neither in [0, c) nor ignore_index:
   then nothing has been written. */
#define DEFINE_CE(T, SFX)                                                                  \
  DEFINE_EXP_ROW(T, SFX)                                                                   \
  DEFINE_ROW_MAX(T, SFX)                                                                   \
  int64_t ce_rows_##SFX(const ce_t *a) {                                                   \
    const T *x = (const T *)a->x, *w = (const T *)a->w, *scale = (const T *)a->scale;      \
    const int64_t *t = a->t;                                                               \
    T *loss = (T *)a->loss, *out = (T *)a->out;                                            \
    const int64_t n = a->n, c = a->c, ign = a->ignore_index;                               \
    for (int64_t r = 0; r < n; r++)                                                        \
      if (t[r] != ign && (t[r] < 0 || t[r] >= c)) return r + 1;                            \
    const double eps = a->eps, keep_t = 1 - eps, per = eps / (double)c;                    \
    const int smooth = eps > 0;                                                            \
    double wsum = (double)c;                                                               \
    if (w) {                                                                               \
      wsum = 0;                                                                            \
      for (int64_t j = 0; j < c; j++) wsum += w[j];                                        \
    }                                                                                      \
    _Pragma("omp parallel for schedule(static) if (n * c >= GRAIN)")                       \
    for (int64_t r = 0; r < n; r++) {                                                      \
      const T *xr = x + r * c;                                                             \
      T *o = out ? out + r * c : 0;                                                        \
      const int keep = t[r] != ign;                                                        \
      const int64_t tr = keep ? t[r] : 0;                                                  \
      const T m = row_max_##SFX(xr, c);                                                    \
      const double d_t = (double)(xr[tr] - m); /* read before o may overwrite xr */        \
      double sw = 0, s;                                                                    \
      if (o && smooth && w) s = exp_row_##SFX(xr, o, w, c, m, 1, 1, 1, &sw);               \
      else if (o && smooth) s = exp_row_##SFX(xr, o, w, c, m, 1, 1, 0, &sw);               \
      else if (o) s = exp_row_##SFX(xr, o, w, c, m, 1, 0, 0, &sw);                         \
      else if (smooth && w) s = exp_row_##SFX(xr, o, w, c, m, 0, 1, 1, &sw);               \
      else if (smooth) s = exp_row_##SFX(xr, o, w, c, m, 0, 1, 0, &sw);                    \
      else s = exp_row_##SFX(xr, o, w, c, m, 0, 0, 0, &sw);                                \
      const double log_s = log(s);                                                         \
      const double w_t = keep ? (w ? (double)w[tr] : 1.0) : 0.0;                           \
      double l = keep_t * w_t * (log_s - d_t);                                             \
      if (smooth) l += per * (wsum * log_s - sw);                                          \
      loss[r] = keep ? (T)l : (T)0;                                                        \
      if (!o) continue;                                                                    \
      const double sc = (double)scale[a->scale_n == 1 ? 0 : r];                            \
      const T coef = (T)((keep_t * w_t + (keep ? per * wsum : 0.0)) * sc / s);             \
      if (smooth && keep) {                                                                \
        const double k = per * sc;                                                         \
        if (w) {                                                                           \
          _Pragma("omp simd") for (int64_t j = 0; j < c; j++) o[j] =                       \
              o[j] * coef - (T)(k * (double)w[j]);                                         \
        } else {                                                                           \
          const T kk = (T)k;                                                               \
          _Pragma("omp simd") for (int64_t j = 0; j < c; j++) o[j] = o[j] * coef - kk;     \
        }                                                                                  \
      } else {                                                                             \
        _Pragma("omp simd") for (int64_t j = 0; j < c; j++) o[j] *= coef;                  \
      }                                                                                    \
      if (keep) o[tr] -= (T)(keep_t * w_t * sc);                                           \
    }                                                                                      \
    return 0;                                                                              \
  }

DEFINE_CE(float, f32)
DEFINE_CE(double, f64)
