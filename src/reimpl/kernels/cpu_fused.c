/* reimpl's one-pass CPU kernels: the fused optimizer updates (a whole list of tensors per
 * call); the pointwise losses are in cpu_pointwise.c, built into the same library.
 *
 * Each optimizer kernel takes two structs, mirrored field by field by ctypes Structures in
 * cpu_fused.py: a batch_t (k tensors as tables of data pointers by role, their sizes, the
 * per-tensor step-dependent scalars such as bias corrections) and the family's options
 * (<family>_opts, named scalars). The caller has checked every tensor against its param
 * (shape, dtype, device, contiguity, no overlap) before building the batch: the kernels
 * trust n[j] for every role. Scalars come formed in double precision (1 - 0.999999f in
 * float would be off by 1%). The element update is the same formula as the multi-tensor
 * path in reimpl/optim/<name>.py.
 *
 * One OpenMP parallel region covers all k tensors; within it each tensor's elements are
 * split over the threads with no barrier in between. The options are hoisted out of the
 * element loops (one loop body per combination, picked once per call), so every loop is a
 * straight vectorizable body: maximize is a sign (exact), decoupled decay a factor.
 */
#include <math.h>
#include <stdint.h>

#define MAX_ROLES 6

/* k tensors of one dtype: t[r][j] is the data of role r (0 param, 1 grad, then the
 * states in the family's order; a NULL table: that state is absent), n[j] its length */
typedef struct {
  int64_t k;
  const int64_t *n;
  void **t[MAX_ROLES];
  const double *per[3]; /* per-tensor scalars, by family */
  const int32_t *first; /* SGD: 1 where the momentum buffer starts this step */
  double grad_scale;    /* GradScaler's scale, to divide the grads by; 0: not scaled */
} batch_t;

typedef struct {
  double w1, b2, w2, eps, wd, shrink;
  int32_t maximize, decoupled, amsgrad;
} adam_opts;
typedef struct {
  double lr, wd, momentum, undamped;
  int32_t nesterov, maximize;
} sgd_opts;
typedef struct {
  double wd, eps;
  int32_t maximize;
} adagrad_opts;
typedef struct {
  double lr, alpha, w, eps, wd, momentum;
  int32_t maximize;
} rmsprop_opts;
typedef struct {
  double w1, b2, eps, wd;
  int32_t maximize;
} adamax_opts;
typedef struct {
  double lr, rho, w, eps, wd;
  int32_t maximize;
} adadelta_opts;
/* NAdam and RAdam: Adam's moments; shrink = 1 - lr * wd (decoupled decay) */
typedef struct {
  double lr, w1, b2, w2, eps, wd, shrink;
  int32_t maximize, decoupled;
} adam_family_opts;
typedef struct {
  double etaminus, etaplus, step_min, step_max;
  int32_t maximize;
} rprop_opts;
typedef struct {
  double lambd, wd;
  int32_t maximize;
} asgd_opts;

#define ELEMENTS _Pragma("omp for simd schedule(static) nowait") for (int64_t i = 0; i < nn; i++)

/* The gradient an update sees: unscaled first when GradScaler handed its scale over (the
 * unscaled value is written back, as torch's fused kernels do), then signed (maximize).
 * `scaled` is loop-invariant, so the compiler unswitches the loop on it. */
#define GRAD(gp, i) (scaled ? (gp[i] = gp[i] / scale_) : gp[i]) * sign

/* what every optimizer kernel reads from its batch first: the tensor count, their sizes, and
   GradScaler's scale (0: the grads are already unscaled) */
#define BATCH_SCALARS(T)                                                                   \
  const int64_t k = b->k, *n = b->n;                                                       \
  const int scaled = b->grad_scale != 0;                                                   \
  const T scale_ = (T)b->grad_scale;                                                       \
  int64_t total_ = 0;                                                                      \
  for (int64_t j = 0; j < k; j++) total_ += n[j];

/* a batch of fewer elements runs on one thread: waking the others costs more than they
   save, and on a busy machine a parallel region can wait a scheduler tick for one */
#define GRAIN 32768
#define PARALLEL _Pragma("omp parallel if (total_ >= GRAIN)")

/* torch's lerp: a + w (b - a) for w < 1/2, b - (b - a)(1 - w) otherwise */
#define LERP(a, b, w, LOW) ((LOW) ? (a) + (w) * ((b) - (a)) : (b) - ((b) - (a)) * (1 - (w)))

/* ----------------------------------------------------------------------------- Adam(W) */

#define ADAM_BODY(T, SQRT, COUPLED, AMSGRAD, LOW)                                          \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *mp = (T *)m[j], *vp = (T *)v[j];                                   \
    T *gp = (T *)g[j];                                                                     \
    T *xp = AMSGRAD ? (T *)vmax[j] : 0;                                                    \
    const T ss = (T)step_size[j], bc = (T)bc2_sqrt[j];                                     \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = GRAD(gp, i);                                                                  \
      if (COUPLED) gi += wd_ * pp[i];                                                      \
      T mi = LERP(mp[i], gi, w1_, LOW);                                                    \
      T vi = vp[i] * b2_ + w2_ * gi * gi;                                                  \
      mp[i] = mi;                                                                          \
      vp[i] = vi;                                                                          \
      if (AMSGRAD) { vi = xp[i] > vi ? xp[i] : vi; xp[i] = vi; }                           \
      pp[i] = pp[i] * shrink_ - ss * (mi / (SQRT(vi) / bc + eps_));                        \
    }                                                                                      \
  }

#define ADAM_LOW(T, SQRT, COUPLED, AMSGRAD)                                                \
  if (w1_ < (T)0.5) { ADAM_BODY(T, SQRT, COUPLED, AMSGRAD, 1) }                            \
  else { ADAM_BODY(T, SQRT, COUPLED, AMSGRAD, 0) }

#define DEFINE_ADAM(T, SQRT, NAME)                                                         \
  void NAME(const batch_t *b, const adam_opts *o) {                                        \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **m = b->t[2], **v = b->t[3], **vmax = b->t[4];     \
    const double *step_size = b->per[0], *bc2_sqrt = b->per[1];                            \
    const int amsgrad = o->amsgrad && vmax;                                                \
    const T sign = o->maximize ? -1 : 1, w1_ = o->w1, b2_ = o->b2, w2_ = o->w2;            \
    const T eps_ = o->eps, wd_ = o->wd;                                                    \
    const T shrink_ = (o->decoupled && o->wd != 0) ? (T)o->shrink : 1;                     \
    const int coupled = !o->decoupled && o->wd != 0;                                       \
    PARALLEL {                                                                             \
      if (coupled) {                                                                       \
        if (amsgrad) { ADAM_LOW(T, SQRT, 1, 1) } else { ADAM_LOW(T, SQRT, 1, 0) }          \
      } else {                                                                             \
        if (amsgrad) { ADAM_LOW(T, SQRT, 0, 1) } else { ADAM_LOW(T, SQRT, 0, 0) }          \
      }                                                                                    \
    }                                                                                      \
  }

/* ----------------------------------------------------------------------------- SGD */

/* MODE 0: no momentum; 1: momentum, buffer created this step (= d); 2: momentum */
#define SGD_BODY(T, DECAY, MODE, NESTEROV)                                                 \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *bp = MODE ? (T *)buf[j] : 0;                                       \
    T *gp = (T *)g[j];                                                                     \
    const int64_t nn = n[j];                                                               \
    if (MODE && (first[j] != 0) != (MODE == 1)) continue;                                  \
    ELEMENTS {                                                                             \
      T gi = GRAD(gp, i);                                                                  \
      if (DECAY) gi += wd_ * pp[i];                                                        \
      if (MODE) {                                                                          \
        T bi = MODE == 1 ? gi : bp[i] * mom_ + undamped_ * gi;                             \
        bp[i] = bi;                                                                        \
        gi = NESTEROV ? gi + mom_ * bi : bi;                                               \
      }                                                                                    \
      pp[i] -= lr_ * gi;                                                                   \
    }                                                                                      \
  }

#define SGD_MOM(T, DECAY)                                                                  \
  if (!buf) { SGD_BODY(T, DECAY, 0, 0) }                                                   \
  else if (nesterov) { SGD_BODY(T, DECAY, 1, 1) SGD_BODY(T, DECAY, 2, 1) }                 \
  else { SGD_BODY(T, DECAY, 1, 0) SGD_BODY(T, DECAY, 2, 0) }

#define DEFINE_SGD(T, SQRT, NAME)                                                          \
  void NAME(const batch_t *b, const sgd_opts *o) {                                         \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **buf = b->t[2];                                    \
    const int32_t *first = b->first;                                                       \
    const int nesterov = o->nesterov;                                                      \
    const T sign = o->maximize ? -1 : 1, lr_ = o->lr, wd_ = o->wd, mom_ = o->momentum;     \
    const T undamped_ = o->undamped;                                                       \
    if (buf && !first) return; /* the caller always says which buffers are new */          \
    PARALLEL {                                                                             \
      if (o->wd != 0) { SGD_MOM(T, 1) } else { SGD_MOM(T, 0) }                             \
    }                                                                                      \
  }

/* ----------------------------------------------------------------------------- Adagrad */

#define ADAGRAD_BODY(T, SQRT, DECAY)                                                       \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *sp = (T *)sum[j];                                                  \
    T *gp = (T *)g[j];                                                                     \
    const T c = (T)clr[j];                                                                 \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = GRAD(gp, i);                                                                  \
      if (DECAY) gi += wd_ * pp[i];                                                        \
      T si = sp[i] + gi * gi;                                                              \
      sp[i] = si;                                                                          \
      pp[i] -= c * (gi / (SQRT(si) + eps_));                                               \
    }                                                                                      \
  }

#define DEFINE_ADAGRAD(T, SQRT, NAME)                                                      \
  void NAME(const batch_t *b, const adagrad_opts *o) {                                     \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **sum = b->t[2];                                    \
    const double *clr = b->per[0];                                                         \
    const T sign = o->maximize ? -1 : 1, wd_ = o->wd, eps_ = o->eps;                       \
    PARALLEL {                                                                             \
      if (o->wd != 0) { ADAGRAD_BODY(T, SQRT, 1) } else { ADAGRAD_BODY(T, SQRT, 0) }       \
    }                                                                                      \
  }

/* ----------------------------------------------------------------------------- RMSprop */

#define RMSPROP_BODY(T, SQRT, DECAY, CENTERED, MOMENTUM, LOW)                              \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *qp = (T *)sq[j];                                                   \
    T *ap = CENTERED ? (T *)gavg[j] : 0, *bp = MOMENTUM ? (T *)buf[j] : 0;                 \
    T *gp = (T *)g[j];                                                                     \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = GRAD(gp, i);                                                                  \
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

#define RMSPROP_LOW(T, SQRT, DECAY, CENTERED, MOMENTUM)                                    \
  if (w_ < (T)0.5) { RMSPROP_BODY(T, SQRT, DECAY, CENTERED, MOMENTUM, 1) }                 \
  else { RMSPROP_BODY(T, SQRT, DECAY, CENTERED, MOMENTUM, 0) }

#define RMSPROP_OPTS(T, SQRT, DECAY)                                                       \
  if (gavg) {                                                                              \
    if (buf) { RMSPROP_LOW(T, SQRT, DECAY, 1, 1) } else { RMSPROP_LOW(T, SQRT, DECAY, 1, 0) } \
  } else {                                                                                 \
    if (buf) { RMSPROP_LOW(T, SQRT, DECAY, 0, 1) } else { RMSPROP_LOW(T, SQRT, DECAY, 0, 0) } \
  }

#define DEFINE_RMSPROP(T, SQRT, NAME)                                                      \
  void NAME(const batch_t *b, const rmsprop_opts *o) {                                     \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **sq = b->t[2], **gavg = b->t[3], **buf = b->t[4];  \
    const T sign = o->maximize ? -1 : 1, lr_ = o->lr, alpha_ = o->alpha, w_ = o->w;        \
    const T eps_ = o->eps, wd_ = o->wd, mom_ = o->momentum;                                \
    PARALLEL {                                                                             \
      if (o->wd != 0) { RMSPROP_OPTS(T, SQRT, 1) } else { RMSPROP_OPTS(T, SQRT, 0) }       \
    }                                                                                      \
  }

/* ------------------------------------------------ Adamax, Adadelta, NAdam, RAdam
 * The gradient as every body sees it, then each family's element update. DECAY: L2 decay
 * into the gradient; the decoupled form scales the param by shrink_ first. */
#define GRAD_DECAYED(T, DECAY) T gi = GRAD(gp, i); if (DECAY) gi += wd_ * pp[i];
/* torch.maximum: a NaN on either side wins */
#define MAX_NAN(a, b) (((a) != (a) || (a) > (b)) ? (a) : (b))

#define ADAMAX_BODY(T, DECAY, LOW)                                                         \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *gp = (T *)g[j], *mp = (T *)m[j], *up = (T *)u[j];                  \
    const T c = (T)clr[j];                                                                 \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      GRAD_DECAYED(T, DECAY)                                                               \
      T mi = LERP(mp[i], gi, w1_, LOW);                                                    \
      T ui = MAX_NAN(up[i] * b2_, (gi < 0 ? -gi : gi) + eps_);                             \
      mp[i] = mi;                                                                          \
      up[i] = ui;                                                                          \
      pp[i] -= c * (mi / ui);                                                              \
    }                                                                                      \
  }

#define DEFINE_ADAMAX(T, SQRT, NAME)                                                       \
  void NAME(const batch_t *b, const adamax_opts *o) {                                      \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **m = b->t[2], **u = b->t[3];                       \
    const double *clr = b->per[0];                                                         \
    const T sign = o->maximize ? -1 : 1, w1_ = o->w1, b2_ = o->b2, eps_ = o->eps;          \
    const T wd_ = o->wd;                                                                   \
    PARALLEL {                                                                             \
      if (o->wd != 0) {                                                                    \
        if (w1_ < (T)0.5) { ADAMAX_BODY(T, 1, 1) } else { ADAMAX_BODY(T, 1, 0) }           \
      } else {                                                                             \
        if (w1_ < (T)0.5) { ADAMAX_BODY(T, 0, 1) } else { ADAMAX_BODY(T, 0, 0) }           \
      }                                                                                    \
    }                                                                                      \
  }

#define ADADELTA_BODY(T, SQRT, DECAY)                                                      \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *gp = (T *)g[j], *vp = (T *)v[j], *ap = (T *)acc[j];                \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      GRAD_DECAYED(T, DECAY)                                                               \
      T vi = vp[i] * rho_ + w_ * gi * gi;                                                  \
      T di = SQRT(ap[i] + eps_) / SQRT(vi + eps_) * gi;                                    \
      vp[i] = vi;                                                                          \
      ap[i] = ap[i] * rho_ + w_ * di * di;                                                 \
      pp[i] -= lr_ * di;                                                                   \
    }                                                                                      \
  }

#define DEFINE_ADADELTA(T, SQRT, NAME)                                                     \
  void NAME(const batch_t *b, const adadelta_opts *o) {                                    \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **v = b->t[2], **acc = b->t[3];                     \
    const T sign = o->maximize ? -1 : 1, lr_ = o->lr, rho_ = o->rho, w_ = o->w;            \
    const T eps_ = o->eps, wd_ = o->wd;                                                    \
    PARALLEL {                                                                             \
      if (o->wd != 0) { ADADELTA_BODY(T, SQRT, 1) } else { ADADELTA_BODY(T, SQRT, 0) }     \
    }                                                                                      \
  }

/* NAdam and RAdam: Adam's moments, then each family's step from three per-tensor scalars
 * s0, s1, s2. NAdam: s0 = lr (1 - mu_t) / (1 - prod mu), s1 = lr mu_{t+1} / (1 - prod mu
 * mu_{t+1}), s2 = 1 - beta2^t; the gradient and the momentum each take a step. RAdam:
 * s0 = 1 - beta1^t, s1 = the rectification (0: not yet, plain momentum), s2 =
 * sqrt(1 - beta2^t). */
#define ADAM_FAMILY_BODY(T, DECAY, LOW, UPDATE)                                            \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *gp = (T *)g[j], *mp = (T *)m[j], *vp = (T *)v[j];                  \
    const T s0 = (T)per0[j], s1 = (T)per1[j], s2 = (T)per2[j];                             \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      pp[i] *= shrink_;                                                                    \
      GRAD_DECAYED(T, DECAY)                                                               \
      T mi = LERP(mp[i], gi, w1_, LOW);                                                    \
      T vi = vp[i] * b2_ + w2_ * gi * gi;                                                  \
      mp[i] = mi;                                                                          \
      vp[i] = vi;                                                                          \
      UPDATE                                                                               \
    }                                                                                      \
  }

#define NADAM_BODY(T, SQRT, DECAY, LOW)                                                    \
  ADAM_FAMILY_BODY(T, DECAY, LOW, {                                                        \
    T denom = SQRT(vi / s2) + eps_;                                                        \
    pp[i] = pp[i] - s0 * (gi / denom) - s1 * (mi / denom);                                 \
  })

#define RADAM_BODY(T, SQRT, DECAY, LOW)                                                    \
  ADAM_FAMILY_BODY(T, DECAY, LOW, {                                                        \
    T step = mi / s0 * lr_;                                                                \
    if (s1 != 0) step = step * (s2 / (SQRT(vi) + eps_)) * s1;                              \
    pp[i] -= step;                                                                         \
  })

/* Rprop: torch.sign is 0 for NaN, as this is (both comparisons are false); torch.clamp
   keeps NaN, as the ternaries do */
#define SIGN(T, x) ((T)(((x) > 0) - ((x) < 0)))
#define RPROP_BODY(T)                                                                      \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *gp = (T *)g[j], *qp = (T *)prev[j], *sp = (T *)ss[j];              \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      T gi = GRAD(gp, i);                                                                  \
      T eta = SIGN(T, gi * qp[i]);                                                         \
      eta = eta > 0 ? etaplus_ : eta;                                                      \
      eta = eta < 0 ? etaminus_ : eta;                                                     \
      eta = eta == 0 ? (T)1 : eta;                                                         \
      T si = sp[i] * eta;                                                                  \
      si = si < smin_ ? smin_ : si;                                                        \
      si = si > smax_ ? smax_ : si;                                                        \
      sp[i] = si;                                                                          \
      if (eta == etaminus_) gi = 0;                                                        \
      pp[i] -= SIGN(T, gi) * si;                                                           \
      qp[i] = gi;                                                                          \
    }                                                                                      \
  }

#define DEFINE_RPROP(T, SQRT, NAME)                                                        \
  void NAME(const batch_t *b, const rprop_opts *o) {                                       \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **prev = b->t[2], **ss = b->t[3];                   \
    const T sign = o->maximize ? -1 : 1, etaminus_ = o->etaminus, etaplus_ = o->etaplus;   \
    const T smin_ = o->step_min, smax_ = o->step_max;                                      \
    PARALLEL { RPROP_BODY(T) }                                                             \
  }

/* ASGD: per[0] = eta, per[1] = mu (this step's, before they move); the decay lambd and
 * the L2 term act on the param like one gradient; ax follows the param by weight mu */
#define ASGD_BODY(T, DECAY)                                                                \
  for (int64_t j = 0; j < k; j++) {                                                        \
    T *pp = (T *)p[j], *gp = (T *)g[j], *xp = (T *)ax[j];                                  \
    const T eta = (T)per0[j], mu = (T)per1[j];                                             \
    const int64_t nn = n[j];                                                               \
    ELEMENTS {                                                                             \
      GRAD_DECAYED(T, DECAY)                                                               \
      T pi = pp[i] - eta * (gi + lambd_ * pp[i]);                                          \
      pp[i] = pi;                                                                          \
      xp[i] += (pi - xp[i]) * mu;                                                          \
    }                                                                                      \
  }

#define DEFINE_ASGD(T, SQRT, NAME)                                                         \
  void NAME(const batch_t *b, const asgd_opts *o) {                                        \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **ax = b->t[2];                                     \
    const double *per0 = b->per[0], *per1 = b->per[1];                                     \
    const T sign = o->maximize ? -1 : 1, lambd_ = o->lambd, wd_ = o->wd;                   \
    PARALLEL {                                                                             \
      if (o->wd != 0) { ASGD_BODY(T, 1) } else { ASGD_BODY(T, 0) }                         \
    }                                                                                      \
  }

#define DEFINE_ADAM_FAMILY(T, SQRT, NAME, BODY)                                            \
  void NAME(const batch_t *b, const adam_family_opts *o) {                                 \
    BATCH_SCALARS(T)                                                                       \
    void **p = b->t[0], **g = b->t[1], **m = b->t[2], **v = b->t[3];                       \
    const double *per0 = b->per[0], *per1 = b->per[1], *per2 = b->per[2];                  \
    const T sign = o->maximize ? -1 : 1, lr_ = o->lr, w1_ = o->w1, b2_ = o->b2;            \
    const T w2_ = o->w2, eps_ = o->eps, wd_ = o->wd;                                       \
    const T shrink_ = (o->decoupled && o->wd != 0) ? (T)o->shrink : 1;                     \
    const int coupled = !o->decoupled && o->wd != 0;                                       \
    (void)lr_; /* NAdam's step sizes come per tensor */                                    \
    PARALLEL {                                                                             \
      if (coupled) {                                                                       \
        if (w1_ < (T)0.5) { BODY(T, SQRT, 1, 1) } else { BODY(T, SQRT, 1, 0) }             \
      } else {                                                                             \
        if (w1_ < (T)0.5) { BODY(T, SQRT, 0, 1) } else { BODY(T, SQRT, 0, 0) }             \
      }                                                                                    \
    }                                                                                      \
  }

/* every family in float and double: <family>_f32 and <family>_f64 */
#define BOTH_DTYPES(DEFINE, FAMILY)                                                        \
  DEFINE(float, sqrtf, FAMILY##_f32)                                                       \
  DEFINE(double, sqrt, FAMILY##_f64)
#define DEFINE_NADAM(T, SQRT, NAME) DEFINE_ADAM_FAMILY(T, SQRT, NAME, NADAM_BODY)
#define DEFINE_RADAM(T, SQRT, NAME) DEFINE_ADAM_FAMILY(T, SQRT, NAME, RADAM_BODY)

BOTH_DTYPES(DEFINE_ADAM, adam)
BOTH_DTYPES(DEFINE_SGD, sgd)
BOTH_DTYPES(DEFINE_ADAGRAD, adagrad)
BOTH_DTYPES(DEFINE_RMSPROP, rmsprop)
BOTH_DTYPES(DEFINE_ADAMAX, adamax)
BOTH_DTYPES(DEFINE_ADADELTA, adadelta)
BOTH_DTYPES(DEFINE_NADAM, nadam)
BOTH_DTYPES(DEFINE_RADAM, radam)
BOTH_DTYPES(DEFINE_RPROP, rprop)
BOTH_DTYPES(DEFINE_ASGD, asgd)
