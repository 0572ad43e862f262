/* reimpl's CPU kernels for the normalization layers (layer, RMS and group norm), forward
 * and backward; built into one library with cpu_fused.c. Mirrored by the ctypes structure
 * in cpu_norm.py, whose caller has checked every operand (dtype, element count,
 * contiguity, storage size, no overlap between what is written and anything else).
 *
 * One description serves all three layers: x is (rows / groups, groups, k, s) in memory
 * order, each row of d = k * s elements is normalized on its own, and channel c of group
 * g (k channels per group, each s elements long) has the affine weight and bias
 * w[g * k + c], b[g * k + c]:
 *   layer / RMS norm: groups 1, k = the normalized size, s 1 (a weight per element);
 *   group norm:       (N, C, *) as groups G, k = C / G, s = the spatial size.
 * Layer and group norm center the row: x_hat = (x - mean) * rstd, rstd = 1 / sqrt(var +
 * eps); RMS norm does not: x_hat = x * rstd, rstd = 1 / sqrt(mean(x^2) + eps).
 *
 * Row sums are accumulated in double (the row is in cache for the second pass); mean and
 * variance are then rounded to T and rstd formed in T, and the elementwise arithmetic is
 * in T in the order torch's CPU kernels use (fma where they fuse), so that an output
 * agrees with torch's to the last bit whenever the statistics do -- including rows whose
 * exact result is the bias (a row of one value), where both round alike:
 *   layer: fma((x - m) * rstd, w, b)  [w only: (x - m) * rstd * w; b only: fma(x - m, rstd, b)]
 *   group: fma(x, sc, fma(-sc, m, b)), sc = rstd * w   [neither w nor b: (x - m) * rstd]
 *   RMS:   x * rstd * w (torch's composite: two roundings)
 * Backward is the closed form, for g = dy * w:
 *   dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))   (RMS: no mean(g))
 *   dw = sum over rows of dy * x_hat (layer norm: x_hat as torch forms it there,
 *        fma(x, rstd, -rstd * m)),  db = sum over rows of dy
 * dw and db are summed per thread into private double buffers, then over the threads in
 * thread order, so a result does not depend on timing.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct {
  const void *x, *w, *b, *dy; /* w, b: NULL when absent; dy: backward only */
  void *y, *mean, *rstd;      /* per row; mean NULL for RMS norm */
  void *dx, *dw, *db;         /* backward outputs, each NULL when not wanted */
  int64_t rows, groups, k, s;
  int32_t kind; /* NORM_LAYER, NORM_RMS or NORM_GROUP */
  double eps;
} norm_t;

enum { NORM_LAYER = 0, NORM_RMS = 1, NORM_GROUP = 2 };

static int threads(void) {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}

/* below this many elements a call runs on one thread: waking the others costs more than
   they save, and on a busy machine a parallel region can wait a whole scheduler tick for
   a thread that is not running */
#define GRAIN 32768

/* Sums over a row or channel, two-level: LANES partial sums in T (independent chains the
   compiler keeps in vector registers, so the adds pipeline instead of waiting on one
   another; a short tail goes into the first ones), folded pairwise (log2(LANES) vector
   steps, not LANES dependent scalar adds) and added into double every CHUNK elements, so
   no partial ever holds more than CHUNK / LANES terms. The order depends only on n, never
   on threads or timing. */
#define LANES 64
#define CHUNK 4096
#define FOLD(p)                                                                            \
  for (int w_ = LANES / 2; w_ > 0; w_ /= 2)                                                \
    for (int j_ = 0; j_ < w_; j_++) p[j_] += p[j_ + w_];
#define DEFINE_SUMS(T, SFX)                                                                \
  /* sum of x[i] - c, and (sq != NULL) of (x[i] - c)^2 */                                  \
  static double sums_##SFX(const T *x, int64_t n, T c, double *sq) {                       \
    double s = 0, q = 0;                                                                   \
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {                                            \
      const int64_t e = c0 + CHUNK < n ? c0 + CHUNK : n;                                   \
      T ps[LANES] = {0}, pq[LANES] = {0};                                                  \
      int64_t i = c0;                                                                      \
      for (; i + LANES <= e; i += LANES) {                                                 \
        for (int j = 0; j < LANES; j++) {                                                  \
          const T v = x[i + j] - c;                                                        \
          ps[j] += v;                                                                      \
          if (sq) pq[j] += v * v;                                                          \
        }                                                                                  \
      }                                                                                    \
      for (int j = 0; i + j < e; j++) {                                                    \
        const T v = x[i + j] - c;                                                          \
        ps[j] += v;                                                                        \
        if (sq) pq[j] += v * v;                                                            \
      }                                                                                    \
      FOLD(ps)                                                                             \
      FOLD(pq)                                                                             \
      s += ps[0];                                                                          \
      q += pq[0];                                                                          \
    }                                                                                      \
    if (sq) *sq = q;                                                                       \
    return s;                                                                              \
  }                                                                                        \
  /* sum of dy[i] and of dy[i] * x_hat[i], x_hat = (x - m) * rs in T */                    \
  static void grad_sums_##SFX(const T *x, const T *dy, int64_t n, T m, T rs, double *sdy,  \
                              double *sdyxh) {                                             \
    double a = 0, b = 0;                                                                   \
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {                                            \
      const int64_t e = c0 + CHUNK < n ? c0 + CHUNK : n;                                   \
      T pa[LANES] = {0}, pb[LANES] = {0};                                                  \
      int64_t i = c0;                                                                      \
      for (; i + LANES <= e; i += LANES) {                                                 \
        for (int j = 0; j < LANES; j++) {                                                  \
          pa[j] += dy[i + j];                                                              \
          pb[j] += dy[i + j] * ((x[i + j] - m) * rs);                                      \
        }                                                                                  \
      }                                                                                    \
      for (int j = 0; i + j < e; j++) {                                                    \
        pa[j] += dy[i + j];                                                                \
        pb[j] += dy[i + j] * ((x[i + j] - m) * rs);                                        \
      }                                                                                    \
      FOLD(pa)                                                                             \
      FOLD(pb)                                                                             \
      a += pa[0];                                                                          \
      b += pb[0];                                                                          \
    }                                                                                      \
    *sdy = a;                                                                              \
    *sdyxh = b;                                                                            \
  }

#define FLUSH 32 /* rows a thread sums in T before adding them into its double sums */
#define DEFINE_FLUSH(T, SFX)                                                               \
  static void flush_##SFX(T *f, double *acc, int64_t n) {                                  \
    _Pragma("omp simd") for (int64_t i = 0; i < n; i++) {                                  \
      acc[i] += f[i];                                                                      \
      f[i] = 0;                                                                            \
    }                                                                                      \
  }

DEFINE_FLUSH(float, f32)
DEFINE_FLUSH(double, f64)
DEFINE_SUMS(float, f32)
DEFINE_SUMS(double, f64)

/* the mean (0 for RMS norm) and rstd of the d elements at xr, as T. One pass of sums of
   x - c and (x - c)^2, c the mean of the row's first 64 elements (the lines the pass reads
   first anyway; samples spread over the row cost a memory round trip each): then
   var = E[(x - c)^2] - E[x - c]^2 loses nothing to cancellation while c is near the mean
   (E[x - c]^2 small against var). Where it is not (E[x - c]^2 > 16 var: a row whose
   samples missed its mass), the sums are taken again around the mean they found, so at
   most about one digit is ever lost. The variance (or mean square) is rounded to T before
   rstd, as torch's kernels hold it. */
#define SHIFT_SAMPLES 64
#define DEFINE_SHIFT(T, SFX)                                                               \
  static T shift_##SFX(const T *x, int64_t d) {                                           \
    const int64_t n = d < SHIFT_SAMPLES ? d : SHIFT_SAMPLES;                               \
    double s = 0;                                                                          \
    for (int64_t i = 0; i < n; i++) s += x[i];                                             \
    return (T)(s / (double)n);                                                             \
  }

DEFINE_SHIFT(float, f32)
DEFINE_SHIFT(double, f64)

#define ROW_STATS(T, SFX, SQRT, xr, d, kind, eps, m_out, rs_out)                           \
  {                                                                                        \
    T c = kind != NORM_RMS ? shift_##SFX(xr, d) : (T)0;                                    \
    double sq, sc = sums_##SFX(xr, d, c, &sq) / (double)d, var_d = sq / (double)d;         \
    if (kind != NORM_RMS) {                                                                \
      var_d -= sc * sc;                                                                    \
      if (sc * sc > 16 * var_d) { /* the samples missed: center on the mean found */       \
        c = (T)((double)c + sc);                                                           \
        sc = sums_##SFX(xr, d, c, &sq) / (double)d;                                        \
        var_d = sq / (double)d - sc * sc;                                                  \
      }                                                                                    \
    }                                                                                      \
    const T var = (T)(var_d < 0 ? 0 : var_d); /* (NaN stays NaN) */                         \
    m_out = (T)((double)c + sc);                                                           \
    /* torch's group norm adds eps in double; layer norm and RMS norm in T */              \
    if (kind == NORM_GROUP) rs_out = (T)(1.0 / sqrt((double)var + (eps)));                 \
    else rs_out = (T)1 / SQRT(var + (T)(eps));                                             \
  }

/* one row's output, in torch's arithmetic (see the top); W, B: constants (weight, bias
   given), so each combination is its own straight loop */
#define FWD_ROW(T, FMA, W, B)                                                              \
  if (kind == NORM_LAYER) {                                                                \
    const T *wr = W ? w + ch : 0, *br = B ? b + ch : 0;                                    \
    _Pragma("omp simd") for (int64_t i = 0; i < k; i++) {                                  \
      if (W && B) yr[i] = FMA((xr[i] - m) * rs, wr[i], br[i]);                             \
      else if (W) yr[i] = (xr[i] - m) * rs * wr[i];                                        \
      else if (B) yr[i] = FMA(xr[i] - m, rs, br[i]);                                       \
      else yr[i] = (xr[i] - m) * rs;                                                       \
    }                                                                                      \
  } else if (kind == NORM_RMS) {                                                           \
    const T *wr = W ? w + ch : 0;                                                          \
    _Pragma("omp simd") for (int64_t i = 0; i < k; i++) {                                  \
      yr[i] = W ? xr[i] * rs * wr[i] : xr[i] * rs;                                         \
    }                                                                                      \
  } else {                                                                                 \
    for (int64_t c = 0; c < k; c++) {                                                      \
      const T sc = W ? rs * w[ch + c] : rs;                                                \
      const T sh = FMA(-sc, m, B ? b[ch + c] : (T)0);                                      \
      const T *xc = xr + c * s;                                                            \
      T *yc = yr + c * s;                                                                  \
      _Pragma("omp simd") for (int64_t i = 0; i < s; i++) {                                \
        yc[i] = (W || B) ? FMA(xc[i], sc, sh) : (xc[i] - m) * rs;                          \
      }                                                                                    \
    }                                                                                      \
  }

/* backward, first pass over a row: sg, sgx (sums of g = dy * w and of g * x_hat) and,
   with ACC, this thread's dw / db sums per channel */
#define BWD_SUMS(T, SFX, FMA, W, ACC)                                                      \
  if (s == 1) {                                                                            \
    const T *wr = W ? w + ch : 0;                                                          \
    for (int64_t c0 = 0; c0 < k; c0 += CHUNK) { /* two-level sums, as sums_##SFX */        \
      const int64_t e = c0 + CHUNK < k ? c0 + CHUNK : k;                                   \
      T pg[LANES] = {0}, px[LANES] = {0};                                                  \
      int64_t i = c0;                                                                      \
      for (; i + LANES <= e; i += LANES) {                                                 \
        for (int j = 0; j < LANES; j++) {                                                  \
          const T g = W ? dyr[i + j] * wr[i + j] : dyr[i + j];                             \
          pg[j] += g;                                                                      \
          px[j] += g * ((xr[i + j] - m) * rs);                                             \
        }                                                                                  \
      }                                                                                    \
      for (int j = 0; i + j < e; j++) {                                                    \
        const T g = W ? dyr[i + j] * wr[i + j] : dyr[i + j];                               \
        pg[j] += g;                                                                        \
        px[j] += g * ((xr[i + j] - m) * rs);                                               \
      }                                                                                    \
      FOLD(pg)                                                                             \
      FOLD(px)                                                                             \
      sg += pg[0];                                                                         \
      sgx += px[0];                                                                        \
    }                                                                                      \
    if (ACC) { /* into this thread's T sums of the last few rows (see BWD_ROWS) */         \
      T *aw = fw + ch, *ab = fb + ch;                                                      \
      const T nb = -rs * m; /* layer norm's dw: x_hat as torch forms it there */           \
      _Pragma("omp simd") for (int64_t i = 0; i < k; i++) {                                \
        aw[i] += dyr[i] * (kind == NORM_LAYER ? FMA(xr[i], rs, nb) : (xr[i] - m) * rs);    \
        ab[i] += dyr[i];                                                                   \
      }                                                                                    \
    }                                                                                      \
  } else {                                                                                 \
    for (int64_t c = 0; c < k; c++) {                                                      \
      /* g = dy * w is w * dy over a whole channel: its sums are w times dy's */           \
      double cb, cw;                                                                       \
      grad_sums_##SFX(xr + c * s, dyr + c * s, s, m, rs, &cb, &cw);                        \
      const double wc = W ? (double)w[ch + c] : 1.0;                                       \
      sg += wc * cb;                                                                       \
      sgx += wc * cw;                                                                      \
      if (ACC) {                                                                           \
        pw[ch + c] += cw;                                                                  \
        pb[ch + c] += cb;                                                                  \
      }                                                                                    \
    }                                                                                      \
  }

/* backward, second pass: dx = (g - mg - x_hat * mgx) * rs */
#define BWD_DX(T, W)                                                                       \
  if (s == 1) {                                                                            \
    const T *wr = W ? w + ch : 0;                                                          \
    _Pragma("omp simd") for (int64_t i = 0; i < k; i++) {                                  \
      const T xh = (xr[i] - m) * rs;                                                       \
      const T g = W ? dyr[i] * wr[i] : dyr[i];                                             \
      dxr[i] = (g - mg - xh * mgx) * rs;                                                   \
    }                                                                                      \
  } else {                                                                                 \
    for (int64_t c = 0; c < k; c++) {                                                      \
      const T wc = W ? w[ch + c] : (T)1;                                                   \
      const T *xc = xr + c * s, *dyc = dyr + c * s;                                        \
      T *dxc = dxr + c * s;                                                                \
      _Pragma("omp simd") for (int64_t i = 0; i < s; i++) {                                \
        const T xh = (xc[i] - m) * rs;                                                     \
        dxc[i] = (dyc[i] * wc - mg - xh * mgx) * rs;                                       \
      }                                                                                    \
    }                                                                                      \
  }

#define BWD_ROWS(T, SFX, FMA, W, ACC)                                                      \
  int64_t pending = 0; /* rows summed into fw / fb since the last flush */                 \
  _Pragma("omp for schedule(static) nowait") for (int64_t r = 0; r < rows; r++) {          \
    const T *xr = x + r * d, *dyr = dy + r * d;                                            \
    const T m = mean ? mean[r] : (T)0, rs = rstd[r];                                       \
    const int64_t ch = (r % groups) * k; /* this row's first channel */                    \
    double sg = 0, sgx = 0;                                                                \
    BWD_SUMS(T, SFX, FMA, W, ACC)                                                          \
    if (ACC && s == 1 && ++pending == FLUSH) {                                             \
      flush_##SFX(fw, pw, 2 * channels);                                                   \
      pending = 0;                                                                         \
    }                                                                                      \
    if (!dx) continue;                                                                     \
    const T mg = kind != NORM_RMS ? (T)(sg / (double)d) : (T)0;                            \
    const T mgx = (T)(sgx / (double)d);                                                    \
    T *dxr = dx + r * d;                                                                   \
    BWD_DX(T, W)                                                                           \
  }                                                                                        \
  if (ACC && s == 1 && pending) flush_##SFX(fw, pw, 2 * channels);

#define DEFINE_NORM(T, SFX, SQRT, FMA, NAME_F, NAME_B)                                     \
  void NAME_F(const norm_t *a) {                                                           \
    const T *x = (const T *)a->x, *w = (const T *)a->w, *b = (const T *)a->b;              \
    T *y = (T *)a->y, *mean = (T *)a->mean, *rstd = (T *)a->rstd;                          \
    const int64_t rows = a->rows, groups = a->groups, k = a->k, s = a->s, d = k * s;       \
    const int kind = a->kind;                                                              \
    const double eps = a->eps;                                                             \
    _Pragma("omp parallel for schedule(static) if (rows * d >= GRAIN)")                    \
    for (int64_t r = 0; r < rows; r++) {                                                   \
      const T *xr = x + r * d;                                                             \
      T *yr = y + r * d;                                                                   \
      T m, rs;                                                                             \
      ROW_STATS(T, SFX, SQRT, xr, d, kind, eps, m, rs)                                     \
      if (mean) mean[r] = m;                                                               \
      rstd[r] = rs;                                                                        \
      const int64_t ch = (r % groups) * k; /* this row's first channel */                  \
      if (w && b) { FWD_ROW(T, FMA, 1, 1) }                                                \
      else if (w) { FWD_ROW(T, FMA, 1, 0) }                                                \
      else if (b) { FWD_ROW(T, FMA, 0, 1) }                                                \
      else { FWD_ROW(T, FMA, 0, 0) }                                                       \
    }                                                                                      \
  }                                                                                        \
                                                                                           \
  int NAME_B(const norm_t *a) {                                                            \
    const T *x = (const T *)a->x, *w = (const T *)a->w, *dy = (const T *)a->dy;            \
    const T *mean = (const T *)a->mean, *rstd = (const T *)a->rstd;                        \
    T *dx = (T *)a->dx, *dw = (T *)a->dw, *db = (T *)a->db;                                \
    const int64_t rows = a->rows, groups = a->groups, k = a->k, s = a->s, d = k * s;       \
    const int64_t channels = groups * k;                                                   \
    const int kind = a->kind, nt = threads();                                              \
    /* per thread: the dw sums of every channel, then the db sums, in double; layer and    \
       RMS norm (a weight per element) add each row into T sums first, flushed into the    \
       double ones every FLUSH rows (a double add per element and row halves the speed) */ \
    const int want = (dw || db) && channels > 0;                                           \
    const size_t per = 2 * (size_t)channels, nacc = want ? (size_t)nt * per : 0;           \
    double *acc = want ? calloc(nacc, sizeof(double)) : 0;                                 \
    T *facc = want && s == 1 ? calloc(nacc, sizeof(T)) : 0;                                \
    if (want && (!acc || (s == 1 && !facc))) {                                             \
      free(acc);                                                                           \
      return 1;                                                                            \
    }                                                                                      \
    _Pragma("omp parallel num_threads(nt) if (rows * d >= GRAIN)") {                       \
      double *pw = acc ? acc + (size_t)thread_id() * per : 0;                              \
      double *pb = pw ? pw + channels : 0;                                                 \
      T *fw = facc ? facc + (size_t)thread_id() * per : 0;                                 \
      T *fb = fw ? fw + channels : 0;                                                      \
      if (w && acc) { BWD_ROWS(T, SFX, FMA, 1, 1) }                                        \
      else if (w) { BWD_ROWS(T, SFX, FMA, 1, 0) }                                          \
      else if (acc) { BWD_ROWS(T, SFX, FMA, 0, 1) }                                        \
      else { BWD_ROWS(T, SFX, FMA, 0, 0) }                                                 \
    }                                                                                      \
    if (acc) {                                                                             \
      for (int64_t c = 0; c < channels; c++) {                                             \
        double tw = 0, tb = 0;                                                             \
        for (int t = 0; t < nt; t++) {                                                     \
          tw += acc[(size_t)t * 2 * (size_t)channels + (size_t)c];                         \
          tb += acc[(size_t)t * 2 * (size_t)channels + (size_t)(channels + c)];            \
        }                                                                                  \
        if (dw) dw[c] = (T)tw;                                                             \
        if (db) db[c] = (T)tb;                                                             \
      }                                                                                    \
      free(acc);                                                                           \
      free(facc);                                                                          \
    }                                                                                      \
    return 0;                                                                              \
  }

DEFINE_NORM(float, f32, sqrtf, fmaf, norm_fwd_f32, norm_bwd_f32)
DEFINE_NORM(double, f64, sqrt, fma, norm_fwd_f64, norm_bwd_f64)
