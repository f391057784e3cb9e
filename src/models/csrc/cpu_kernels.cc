// CPU kernels for MindSpore custom ops (ops.Custom, func_type="aot"), float32 only.
//
// MindSpore 2.10's CPU kernels for some of SegFormer's and ViT's hot spots are 3-30x slower
// than PyTorch's (../shared/notes/perf.md): exact GELU (Erf), the 3x3 depthwise conv of
// vectorised pass, split over a small pool of threads.
// Loaded and wrapped by src/models/cpu_kernels.py; every entry point has the AOT signature
//   int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//         void *stream, void *extra)
// with params = inputs then outputs, and returns 0 on success.
//
// Build: g++ -O3 -march=native -fopenmp-simd -pthread -shared -fPIC (cpu_kernels.py, cached).
// Threads: a pool of its own whose idle workers sleep on a condition variable. Not OpenMP:
// libgomp's idle threads spin after every parallel region and, on few cores, took the CPU
// from MindSpore's kernels that ran next (its MatMuls ran ~3x slower between our kernels).
// Size: MS_SEG_KERNEL_THREADS, else OMP_NUM_THREADS, else the hardware threads.
#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

class ThreadPool {
 public:
  using Task = std::function<void(int chunk, int64_t begin, int64_t end)>;

  static ThreadPool &Instance() {
    // never destroyed: sleeping workers need no joining at process exit
    static ThreadPool *pool = new ThreadPool(DefaultSize());
    return *pool;
  }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  // task(chunk, begin, end) over at most size() contiguous chunks of [0, n); the caller runs
  // chunk 0 and returns when all are done. One call at a time (kernels launched together
  // from different MindSpore threads take turns).
  void Run(int64_t n, const Task &task) {
    const int chunks = static_cast<int>(std::min<int64_t>(size(), n));
    if (chunks <= 1) {
      if (n > 0) task(0, 0, n);
      return;
    }
    std::lock_guard<std::mutex> call(call_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      n_ = n;
      chunks_ = chunks;
      pending_ = chunks - 1;
      ++generation_;
    }
    wake_.notify_all();
    task(0, 0, Bound(n, chunks, 1));
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    task_ = nullptr;
  }

 private:
  static int DefaultSize() {
    for (const char *name : {"MS_SEG_KERNEL_THREADS", "OMP_NUM_THREADS"}) {
      const char *value = std::getenv(name);
      if (value != nullptr && std::atoi(value) > 0) return std::atoi(value);
    }
    const unsigned hardware = std::thread::hardware_concurrency();
    return hardware > 0 ? static_cast<int>(hardware) : 1;
  }

  static int64_t Bound(int64_t n, int chunks, int i) { return n * i / chunks; }

  explicit ThreadPool(int size) {
    for (int i = 1; i < size; ++i) workers_.emplace_back([this, i] { Work(i); });
    for (auto &worker : workers_) worker.detach();
  }

  void Work(int index) {
    uint64_t seen = 0;
    for (;;) {
      const Task *task;
      int64_t n;
      int chunks;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        task = task_;
        n = n_;
        chunks = chunks_;
      }
      if (index >= chunks) continue;  // fewer chunks than threads this time
      (*task)(index, Bound(n, chunks, index), Bound(n, chunks, index + 1));
      std::lock_guard<std::mutex> lock(mutex_);
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const Task *task_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
};

// A sum over [0, n) split over the pool: body(begin, end, acc) adds the terms of its part to
// acc (`width` doubles, zeroed); returns the parts' accumulators added up.
template <typename Body>
std::vector<double> ParallelSum(int64_t n, int64_t width, Body body) {
  ThreadPool &pool = ThreadPool::Instance();
  std::vector<std::vector<double>> partial(pool.size(), std::vector<double>(width, 0.0));
  pool.Run(n, [&](int chunk, int64_t begin, int64_t end) {
    body(begin, end, partial[chunk].data());
  });
  std::vector<double> total(width, 0.0);
  for (const auto &acc : partial) {
    for (int64_t i = 0; i < width; ++i) total[i] += acc[i];
  }
  return total;
}

// body(i) for i in [0, n), split over the pool.
template <typename Body>
void ParallelFor(int64_t n, Body body) {
  ThreadPool::Instance().Run(n, [&](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) body(i);
  });
}

int64_t NumElements(int ndim, const int64_t *shape) {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool AllFloat32(int nparam, const char **dtypes) {
  for (int i = 0; i < nparam; ++i) {
    if (std::strcmp(dtypes[i], "float32") != 0 && std::strcmp(dtypes[i], "float") != 0) return false;
  }
  return true;
}

// erf(x) as x * P(x^2) / Q(x^2) on [-4, 4] (|erf| rounds to 1 in float32 beyond):
// the rational minimax approximation Eigen/XLA use for float, max error a few ulp.
// Written as plain arithmetic so the compiler vectorises the loops that call it.
inline float Erf(float x) {
  x = x < -4.f ? -4.f : (x > 4.f ? 4.f : x);
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

// exp(x) for x <= 0 (the Gaussian density below): Cody-Waite reduction x = n ln2 + r,
// degree-6 polynomial for exp(r) on |r| <= ln2/2, scaled by 2^n built from its bits.
// Relative error ~2 ulp; x is clamped at -87 so 2^n stays a normal float.
inline float ExpNonPositive(float x) {
  x = x < -87.f ? -87.f : x;
  const float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;  // ln2 split in a short high part and a correction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

constexpr float kSqrtHalf = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

// 3x3 depthwise conv, stride 1, zero padding 1, on channels-last [B, H, W, C]:
// out[b,y,x,c] = bias[c] + sum_{i,j} in[b, y+i-1, x+j-1, c] * w9[(3i+j)*C + c].
// w9 is the weight laid out tap-major so the inner loop runs over contiguous channels.
void DepthwiseConv3x3(const float *in, const float *w9, const float *bias, float *out,
                      int64_t batch, int64_t height, int64_t width, int64_t channels) {
  ParallelFor(batch * height, [&](int64_t row) {
    const int64_t b = row / height, y = row % height;
    const float *image = in + b * height * width * channels;
    float *dst_row = out + row * width * channels;
    for (int64_t x = 0; x < width; ++x) {
      float *dst = dst_row + x * channels;
      if (bias != nullptr) {
        for (int64_t c = 0; c < channels; ++c) dst[c] = bias[c];
      } else {
        for (int64_t c = 0; c < channels; ++c) dst[c] = 0.f;
      }
      for (int64_t i = 0; i < 3; ++i) {
        const int64_t yy = y + i - 1;
        if (yy < 0 || yy >= height) continue;
        for (int64_t j = 0; j < 3; ++j) {
          const int64_t xx = x + j - 1;
          if (xx < 0 || xx >= width) continue;
          const float *src = image + (yy * width + xx) * channels;
          const float *tap = w9 + (3 * i + j) * channels;
#pragma omp simd
          for (int64_t c = 0; c < channels; ++c) dst[c] += src[c] * tap[c];
        }
      }
    }
  });
}

// weight [C, 1, 3, 3] (PyTorch/MindSpore layout) -> tap-major [9, C]; flip = rotate by 180
// degrees, which turns the conv into its input gradient (a 3x3 "full" correlation).
std::vector<float> TapMajor(const float *weight, int64_t channels, bool flip) {
  std::vector<float> w9(9 * channels);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t k = 0; k < 9; ++k) w9[(flip ? 8 - k : k) * channels + c] = weight[c * 9 + k];
  }
  return w9;
}

// Source taps of 1-D bilinear resizing with half-pixel centres (align_corners=False), as
// PyTorch's upsample_bilinear2d and MindSpore's ResizeBilinearV2(half_pixel_centers=True):
// src = (dst + 0.5) * in / out - 0.5, clamped at 0; taps floor(src) and the next one
// (clamped at the edge), weights 1 - frac and frac.
struct Taps {
  std::vector<int64_t> low, high;
  std::vector<float> frac;
};

Taps BilinearTaps(int64_t out_size, int64_t in_size) {
  Taps t;
  t.low.resize(out_size);
  t.high.resize(out_size);
  t.frac.resize(out_size);
  const float scale = static_cast<float>(in_size) / static_cast<float>(out_size);
  for (int64_t i = 0; i < out_size; ++i) {
    float src = (static_cast<float>(i) + 0.5f) * scale - 0.5f;
    src = src < 0.f ? 0.f : src;
    int64_t low = static_cast<int64_t>(src);
    low = low < in_size - 1 ? low : in_size - 1;
    t.low[i] = low;
    t.high[i] = low + 1 < in_size ? low + 1 : in_size - 1;
    t.frac[i] = src - static_cast<float>(low);
  }
  return t;
}

}  // namespace

extern "C" {

// y = 0.5 * x * (1 + erf(x / sqrt(2)))          params: x, y
int GeluErf(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
            void *, void *) {
  if (nparam != 2 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[1]);
  const int64_t n = NumElements(ndims[0], shapes[0]);
  ThreadPool::Instance().Run(n, [&](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      y[i] = 0.5f * v * (1.f + Erf(v * kSqrtHalf));
    }
  });
  return 0;
}

// dx = dy * (Phi(x) + x * phi(x))                params: x, dy, dx
int GeluErfGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                void *, void *) {
  if (nparam != 3 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t n = NumElements(ndims[0], shapes[0]);
  ThreadPool::Instance().Run(n, [&](int, int64_t begin, int64_t end) {
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      const float v = x[i];
      const float cdf = 0.5f * (1.f + Erf(v * kSqrtHalf));
      const float pdf = kInvSqrt2Pi * ExpNonPositive(-0.5f * v * v);
      dx[i] = dy[i] * (cdf + v * pdf);
    }
  });
  return 0;
}

// y = gelu(h + bias), bias over the last axis (a Linear's bias fused into its activation:
// one pass instead of BiasAdd then GELU).   params: h [..., D], bias [D], y [..., D]
int GeluErfBias(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                void *, void *) {
  if (nparam != 3 || !AllFloat32(nparam, dtypes)) return 1;
  const float *h = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  float *y = static_cast<float *>(params[2]);
  const int64_t dim = shapes[0][ndims[0] - 1];
  const int64_t rows = NumElements(ndims[0], shapes[0]) / dim;
  ParallelFor(rows, [&](int64_t r) {
    const float *hr = h + r * dim;
    float *yr = y + r * dim;
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) {
      const float v = hr[i] + bias[i];
      yr[i] = 0.5f * v * (1.f + Erf(v * kSqrtHalf));
    }
  });
  return 0;
}

// dh = dy * gelu'(h + bias); dbias = sum of dh over the rows (double partials per chunk).
// params: h, bias, dy, dh, dbias
int GeluErfBiasGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                    const char **dtypes, void *, void *) {
  if (nparam != 5 || !AllFloat32(nparam, dtypes)) return 1;
  const float *h = static_cast<const float *>(params[0]);
  const float *bias = static_cast<const float *>(params[1]);
  const float *dy = static_cast<const float *>(params[2]);
  float *dh = static_cast<float *>(params[3]);
  float *dbias = static_cast<float *>(params[4]);
  const int64_t dim = shapes[0][ndims[0] - 1];
  const int64_t rows = NumElements(ndims[0], shapes[0]) / dim;
  const std::vector<double> total = ParallelSum(rows, dim, [&](int64_t begin, int64_t end,
                                                                double *acc) {
    for (int64_t r = begin; r < end; ++r) {
      const float *hr = h + r * dim;
      const float *dyr = dy + r * dim;
      float *dhr = dh + r * dim;
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) {
        const float v = hr[i] + bias[i];
        const float cdf = 0.5f * (1.f + Erf(v * kSqrtHalf));
        const float pdf = kInvSqrt2Pi * ExpNonPositive(-0.5f * v * v);
        dhr[i] = dyr[i] * (cdf + v * pdf);
      }
      for (int64_t i = 0; i < dim; ++i) acc[i] += static_cast<double>(dhr[i]);
    }
  });
  for (int64_t i = 0; i < dim; ++i) dbias[i] = static_cast<float>(total[i]);
  return 0;
}

// params: x [B, H, W, C], weight [C, 1, 3, 3], bias [C], y [B, H, W, C]
int DepthwiseConv3x3Nhwc(int nparam, void **params, int *ndims, int64_t **shapes,
                         const char **dtypes, void *, void *) {
  if (nparam != 4 || ndims[0] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t *s = shapes[0];
  const std::vector<float> w9 = TapMajor(static_cast<const float *>(params[1]), s[3], false);
  DepthwiseConv3x3(static_cast<const float *>(params[0]), w9.data(),
                   static_cast<const float *>(params[2]), static_cast<float *>(params[3]),
                   s[0], s[1], s[2], s[3]);
  return 0;
}

// dx = full correlation of dy with the flipped kernel.   params: dy, weight, dx
int DepthwiseConv3x3NhwcGradInput(int nparam, void **params, int *ndims, int64_t **shapes,
                                  const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t *s = shapes[0];
  const std::vector<float> w9 = TapMajor(static_cast<const float *>(params[1]), s[3], true);
  DepthwiseConv3x3(static_cast<const float *>(params[0]), w9.data(), nullptr,
                   static_cast<float *>(params[2]), s[0], s[1], s[2], s[3]);
  return 0;
}

// dw[c,0,i,j] = sum_{b,y,x} dy[b,y,x,c] * x[b,y+i-1,x+j-1,c];  db[c] = sum dy[..., c].
// Per image row the sums run in float over one row, then accumulate in double per thread
// (a 512x1024 map has 2^19 terms per channel), and the threads' partials add up at the end.
// params: x [B, H, W, C], dy [B, H, W, C], dw [C, 1, 3, 3], db [C]
int DepthwiseConv3x3NhwcGradWeight(int nparam, void **params, int *ndims, int64_t **shapes,
                                   const char **dtypes, void *, void *) {
  if (nparam != 4 || ndims[0] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const float *in = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  float *dw = static_cast<float *>(params[2]);
  float *db = static_cast<float *>(params[3]);
  const int64_t batch = shapes[0][0], height = shapes[0][1], width = shapes[0][2],
                channels = shapes[0][3];
  // 9 taps + bias, tap-major
  const std::vector<double> total = ParallelSum(batch * height, 10 * channels,
                                                [&](int64_t begin, int64_t end, double *acc) {
    std::vector<float> row_acc(10 * channels);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / height, y = row % height;
      const float *image = in + b * height * width * channels;
      const float *grad_row = dy + row * width * channels;
      std::fill(row_acc.begin(), row_acc.end(), 0.f);
      for (int64_t x = 0; x < width; ++x) {
        const float *g = grad_row + x * channels;
        float *bias_acc = row_acc.data() + 9 * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) bias_acc[c] += g[c];
        for (int64_t i = 0; i < 3; ++i) {
          const int64_t yy = y + i - 1;
          if (yy < 0 || yy >= height) continue;
          for (int64_t j = 0; j < 3; ++j) {
            const int64_t xx = x + j - 1;
            if (xx < 0 || xx >= width) continue;
            const float *src = image + (yy * width + xx) * channels;
            float *tap_acc = row_acc.data() + (3 * i + j) * channels;
#pragma omp simd
            for (int64_t c = 0; c < channels; ++c) tap_acc[c] += g[c] * src[c];
          }
        }
      }
      for (int64_t k = 0; k < 10 * channels; ++k) acc[k] += row_acc[k];
    }
  });
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t k = 0; k < 9; ++k) dw[c * 9 + k] = static_cast<float>(total[k * channels + c]);
    db[c] = static_cast<float>(total[9 * channels + c]);
  }
  return 0;
}

// LayerNorm over the last axis: y = (x - mean) * rstd * gamma + beta, rstd = 1/sqrt(var + eps),
// biased variance (two passes over the row, float). mean and rstd are kept for the gradient.
// params: x [..., D], gamma [D], beta [D], eps [1], y [..., D], mean [rows], rstd [rows]
int LayerNorm(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              void *, void *) {
  if (nparam != 7 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *gamma = static_cast<const float *>(params[1]);
  const float *beta = static_cast<const float *>(params[2]);
  const float eps = *static_cast<const float *>(params[3]);
  float *y = static_cast<float *>(params[4]);
  float *mean_out = static_cast<float *>(params[5]);
  float *rstd_out = static_cast<float *>(params[6]);
  const int64_t dim = shapes[0][ndims[0] - 1];
  const int64_t rows = NumElements(ndims[0], shapes[0]) / dim;
  ParallelFor(rows, [&](int64_t r) {
    const float *xr = x + r * dim;
    float *yr = y + r * dim;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < dim; ++i) sum += xr[i];
    const float mean = sum / static_cast<float>(dim);
    float sq = 0.f;
#pragma omp simd reduction(+ : sq)
    for (int64_t i = 0; i < dim; ++i) sq += (xr[i] - mean) * (xr[i] - mean);
    const float rstd = 1.f / std::sqrt(sq / static_cast<float>(dim) + eps);
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) yr[i] = (xr[i] - mean) * rstd * gamma[i] + beta[i];
    mean_out[r] = mean;
    rstd_out[r] = rstd;
  });
  return 0;
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * gamma, xhat = (x - mean) * rstd;
// dgamma = sum over rows of dy * xhat, dbeta = sum of dy (double accumulators per thread).
// params: x, dy, gamma, mean, rstd, dx, dgamma, dbeta
int LayerNormGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                  void *, void *) {
  if (nparam != 8 || !AllFloat32(nparam, dtypes)) return 1;
  const float *x = static_cast<const float *>(params[0]);
  const float *dy = static_cast<const float *>(params[1]);
  const float *gamma = static_cast<const float *>(params[2]);
  const float *mean = static_cast<const float *>(params[3]);
  const float *rstd = static_cast<const float *>(params[4]);
  float *dx = static_cast<float *>(params[5]);
  float *dgamma = static_cast<float *>(params[6]);
  float *dbeta = static_cast<float *>(params[7]);
  const int64_t dim = shapes[0][ndims[0] - 1];
  const int64_t rows = NumElements(ndims[0], shapes[0]) / dim;
  // dgamma then dbeta
  const std::vector<double> total = ParallelSum(rows, 2 * dim, [&](int64_t begin, int64_t end,
                                                                  double *acc) {
    std::vector<float> xhat(dim);
    for (int64_t r = begin; r < end; ++r) {
      const float *xr = x + r * dim;
      const float *dyr = dy + r * dim;
      float *dxr = dx + r * dim;
      const float m = mean[r], s = rstd[r];
      float sum_g = 0.f, sum_gx = 0.f;
#pragma omp simd reduction(+ : sum_g, sum_gx)
      for (int64_t i = 0; i < dim; ++i) {
        xhat[i] = (xr[i] - m) * s;
        const float g = dyr[i] * gamma[i];
        sum_g += g;
        sum_gx += g * xhat[i];
      }
      const float mean_g = sum_g / static_cast<float>(dim);
      const float mean_gx = sum_gx / static_cast<float>(dim);
#pragma omp simd
      for (int64_t i = 0; i < dim; ++i) {
        dxr[i] = s * (dyr[i] * gamma[i] - mean_g - xhat[i] * mean_gx);
        acc[i] += static_cast<double>(dyr[i] * xhat[i]);
        acc[dim + i] += static_cast<double>(dyr[i]);
      }
    }
  });
  for (int64_t i = 0; i < dim; ++i) {
    dgamma[i] = static_cast<float>(total[i]);
    dbeta[i] = static_cast<float>(total[dim + i]);
  }
  return 0;
}

// Bilinear resize of NCHW planes, align_corners=False.
// params: x [N, C, h, w], like [..., H, W] (only its shape is read: the output size), y [N, C, H, W]
int ResizeBilinear(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                   void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[2] != 4) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[2], "float32") != 0) return 1;
  const float *x = static_cast<const float *>(params[0]);
  float *y = static_cast<float *>(params[2]);
  const int64_t planes = shapes[0][0] * shapes[0][1], in_h = shapes[0][2], in_w = shapes[0][3];
  const int64_t out_h = shapes[2][2], out_w = shapes[2][3];
  const Taps rows = BilinearTaps(out_h, in_h), cols = BilinearTaps(out_w, in_w);
  ParallelFor(planes * out_h, [&](int64_t row) {
    const int64_t p = row / out_h, i = row % out_h;
    const float *top = x + (p * in_h + rows.low[i]) * in_w;
    const float *bottom = x + (p * in_h + rows.high[i]) * in_w;
    const float fy = rows.frac[i];
    float *dst = y + row * out_w;
    for (int64_t j = 0; j < out_w; ++j) {
      const int64_t a = cols.low[j], b = cols.high[j];
      const float fx = cols.frac[j];
      const float t = top[a] + (top[b] - top[a]) * fx;
      const float u = bottom[a] + (bottom[b] - bottom[a]) * fx;
      dst[j] = t + (u - t) * fy;
    }
  });
  return 0;
}

// Gradient of ResizeBilinear: each output gradient spreads over its 4 source taps.
// Planes are independent, so threads split the planes and scatter without conflicts.
// params: dy [N, C, H, W], x [N, C, h, w] (its shape), dx [N, C, h, w]
int ResizeBilinearGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                       const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[2] != 4) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[2], "float32") != 0) return 1;
  const float *dy = static_cast<const float *>(params[0]);
  float *dx = static_cast<float *>(params[2]);
  const int64_t planes = shapes[2][0] * shapes[2][1], in_h = shapes[2][2], in_w = shapes[2][3];
  const int64_t out_h = shapes[0][2], out_w = shapes[0][3];
  const Taps rows = BilinearTaps(out_h, in_h), cols = BilinearTaps(out_w, in_w);
  ParallelFor(planes, [&](int64_t p) {
    float *plane = dx + p * in_h * in_w;
    std::fill(plane, plane + in_h * in_w, 0.f);
    for (int64_t i = 0; i < out_h; ++i) {
      float *top = plane + rows.low[i] * in_w;
      float *bottom = plane + rows.high[i] * in_w;
      const float fy = rows.frac[i];
      const float *g = dy + (p * out_h + i) * out_w;
      for (int64_t j = 0; j < out_w; ++j) {
        const int64_t a = cols.low[j], b = cols.high[j];
        const float fx = cols.frac[j];
        const float g_top = g[j] * (1.f - fy), g_bottom = g[j] * fy;
        top[a] += g_top * (1.f - fx);
        top[b] += g_top * fx;
        bottom[a] += g_bottom * (1.f - fx);
        bottom[b] += g_bottom * fx;
      }
    }
  });
  return 0;
}

}  // extern "C"
