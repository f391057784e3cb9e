// CPU kernels for MindSpore custom ops (ops.Custom, func_type="aot"), float32 only.
//
// MindSpore 2.10's CPU kernels for some of SegFormer's and ViT's hot spots are 3-30x slower
// than PyTorch's (../shared/notes/perf.md): exact GELU (Erf), the 3x3 depthwise conv of
// Mix-FFN, LayerNorm, bilinear resize. Each kernel here is one vectorised pass, split over a
// small pool of threads. The multi-head attention kernels replace head transposes and the
// stored score matrix (memory: MindSpore's CPU Transpose keeps an index table per element).
// Loaded and wrapped by src/models/cpu_kernels.py; every entry point has the AOT signature
//   int f(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
//         void *stream, void *extra)
// with params = inputs then outputs, and returns 0 on success.
//
// Build: g++ -O3 -march=native -fopenmp-simd -fno-trapping-math -pthread -shared -fPIC
// (cpu_kernels.py, cached).
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


// ---- Multi-head attention: softmax(q k^T / sqrt(d)) v, fused -------------------------------
// q, k and v are read in place from the projections' [B, N, (slots,) H, d] layouts, so no
// head transposes (each a CPU Transpose kernel with an 8 B/element index table in MindSpore
// 2.10) and no [N, M] score tensor in the graph: queries go in blocks of kQueryBlock rows
// whose scores live in per-thread scratch. The backward recomputes the scores from the
// saved log-sum-exp (as flash attention does), so training keeps no probabilities either.

// Operands are padded to multiples of kVec = 16 floats (any SIMD width divides it).
constexpr int64_t kVec = 16;

// One SIMD register of floats, and the register tile of GemmTile (kTileRows rows x
// kTileVecs registers of accumulators). The vector must be the target's own width: a
// 64-byte generic vector on an AVX2 machine is split into register pairs and the 8 x 32
// tile spills to the stack (measured on an AVX2 EPYC: 2 GFLOPS per thread against 65 for
// 8 x 8 in 32-byte vectors, the attention 30x slower than it should be).
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;  // 8 x 32 floats: 16 of the 32 zmm registers
constexpr int kTileVecs = 2;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;  // 8 x 8 floats: 8 of the 16 ymm registers (best of 4x8..8x16)
constexpr int kTileVecs = 1;
#else
constexpr int kVecBytes = 16;  // SSE / NEON
constexpr int kTileVecs = 1;
#endif
constexpr int kTileRows = 8;
typedef float Vec __attribute__((vector_size(kVecBytes)));
constexpr int64_t kLanes = kVecBytes / sizeof(float);
static_assert(kVec % kLanes == 0, "padding must be whole vectors");

inline Vec LoadVec(const float *p) {
  Vec v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline void StoreVec(float *p, Vec v) { std::memcpy(p, &v, sizeof(v)); }

// C[R x kLanes NV] (+)= A[R x k] B[k x kLanes NV], row strides lda, ldb, ldc.
template <int R, int NV>
inline void GemmTile(int64_t k, const float *a, int64_t lda, const float *b, int64_t ldb,
                     float *c, int64_t ldc, bool accumulate) {
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? LoadVec(c + r * ldc + kLanes * v) : Vec{};
  }
  for (int64_t p = 0; p < k; ++p) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = LoadVec(b + p * ldb + kLanes * v);
    for (int r = 0; r < R; ++r) {
      const float ar = a[r * lda + p];
      for (int v = 0; v < NV; ++v) acc[r][v] += ar * bv[v];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int v = 0; v < NV; ++v) StoreVec(c + r * ldc + kLanes * v, acc[r][v]);
  }
}

// C[m x n] (+)= A[m x k] B[k x n], single-threaded; m a multiple of kTileRows, n of kVec.
// Every operand is a padded scratch copy, so the tiles never need edge cases.
void Gemm(int64_t m, int64_t n, int64_t k, const float *a, int64_t lda, const float *b,
          int64_t ldb, float *c, int64_t ldc, bool accumulate) {
  constexpr int64_t tile_cols = kLanes * kTileVecs;
  for (int64_t i = 0; i < m; i += kTileRows) {
    int64_t j = 0;
    for (; j + tile_cols <= n; j += tile_cols) {
      GemmTile<kTileRows, kTileVecs>(k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    }
    for (; j < n; j += kLanes) {
      GemmTile<kTileRows, 1>(k, a + i * lda, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    }
  }
}

inline int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// dst[j][i] = src[i][j] for a rows x cols block, in 16 x 16 tiles (a plain column-order
// loop strides through memory on every store: it took a quarter of the attention's time).
void TransposeBlock(const float *src, int64_t rows, int64_t cols, int64_t ld_src, float *dst,
                    int64_t ld_dst) {
  for (int64_t i0 = 0; i0 < rows; i0 += kVec) {
    const int64_t i1 = std::min(rows, i0 + kVec);
    for (int64_t j0 = 0; j0 < cols; j0 += kVec) {
      const int64_t j1 = std::min(cols, j0 + kVec);
      for (int64_t j = j0; j < j1; ++j) {
        for (int64_t i = i0; i < i1; ++i) dst[j * ld_dst + i] = src[i * ld_src + j];
      }
    }
  }
}

// max of x[0, n): running maxima in kVec / kLanes vector registers (a single scalar maximum
// is a serial vmaxss chain, and GCC does not vectorise the scalar form of this loop)
inline float RowMax(const float *x, int64_t n) {
  constexpr int kRegs = kVec / kLanes;
  Vec lanes[kRegs];
  for (int v = 0; v < kRegs; ++v) lanes[v] = Vec{} + x[0];
  int64_t j = 0;
  for (; j + kVec <= n; j += kVec) {
    for (int v = 0; v < kRegs; ++v) {
      const Vec y = LoadVec(x + j + v * kLanes);
      lanes[v] = lanes[v] > y ? lanes[v] : y;
    }
  }
  float max = x[0];
  for (int v = 0; v < kRegs; ++v) {
    for (int64_t l = 0; l < kLanes; ++l) max = std::max(max, lanes[v][l]);
  }
  for (; j < n; ++j) max = std::max(max, x[j]);
  return max;
}

constexpr int64_t kQueryBlock = 64;

// Where one attention's operands live. Token t of batch b, head h starts at
// base + b * batch_stride + t * row_stride + h * head_dim (q, k, v, out alike).
struct AttentionViews {
  const float *q, *k, *v;
  int64_t q_row, q_batch;    // q strides (dq alike; out and dout are [B, Nq, H, d] contiguous)
  int64_t kv_row, kv_batch;  // k and v strides (dk, dv alike)
  int64_t batch, queries, keys, heads, head_dim;
};

// Per-head packed copies of k or v, zero-padded to whole tiles (rows beyond `keys`, columns
// beyond `head_dim`), so the padding adds nothing to any product.
struct HeadPack {
  std::vector<float> t;     // [head_dim][keys_pad]  transposed (scores = q k^T, dP = dout v^T)
  std::vector<float> rows;  // [keys_pad][dim_pad]   as is (out = P v, dq = dS k)

  // either source may be null: that copy is not made
  HeadPack(const AttentionViews &a, const float *transpose_src, const float *rows_src) {
    const int64_t keys_pad = RoundUp(a.keys, kVec), dim_pad = RoundUp(a.head_dim, kVec);
    if (transpose_src != nullptr) {
      t.assign(a.head_dim * keys_pad, 0.f);
      TransposeBlock(transpose_src, a.keys, a.head_dim, a.kv_row, t.data(), keys_pad);
    }
    if (rows_src != nullptr) {
      rows.assign(keys_pad * dim_pad, 0.f);
      for (int64_t j = 0; j < a.keys; ++j) {
        std::memcpy(&rows[j * dim_pad], rows_src + j * a.kv_row, a.head_dim * sizeof(float));
      }
    }
  }
};

// rows x head_dim of a strided [tokens, H, d] head into a [RoundUp(rows, kTileRows)][dim_pad]
// block, times `scale`, zero padding.
void PackRows(const float *src, int64_t row_stride, int64_t rows, int64_t head_dim, int64_t dim_pad,
              float scale, std::vector<float> *dst) {
  dst->assign(RoundUp(rows, kTileRows) * dim_pad, 0.f);
  for (int64_t r = 0; r < rows; ++r) {
    const float *s = src + r * row_stride;
    float *d = dst->data() + r * dim_pad;
    for (int64_t c = 0; c < head_dim; ++c) d[c] = s[c] * scale;
  }
}

// Splits the (batch, head) pairs' queries into tasks: `parts` contiguous query ranges per pair,
// enough tasks for every thread even with one head and one image (MiT stage 1).
int64_t QueryParts(const AttentionViews &a) {
  const int64_t pairs = a.batch * a.heads;
  const int64_t threads = ThreadPool::Instance().size();
  const int64_t blocks = (a.queries + kQueryBlock - 1) / kQueryBlock;
  return std::max<int64_t>(1, std::min<int64_t>(blocks, (threads + pairs - 1) / pairs));
}

// out [B, Nq, H, d] (row stride H d) and lse [B, H, Nq] (log-sum-exp of each score row).
void AttentionForward(const AttentionViews &a, float *out, float *lse) {
  const int64_t parts = QueryParts(a);
  const float scale = 1.f / std::sqrt(static_cast<float>(a.head_dim));
  const int64_t out_row = a.heads * a.head_dim, out_batch = a.queries * out_row;
  ParallelFor(a.batch * a.heads * parts, [&](int64_t task) {
    const int64_t pair = task / parts, part = task % parts;
    const int64_t b = pair / a.heads, h = pair % a.heads;
    const int64_t q_begin = a.queries * part / parts, q_end = a.queries * (part + 1) / parts;
    const int64_t kv_offset = b * a.kv_batch + h * a.head_dim;
    const HeadPack k_pack(a, a.k + kv_offset, nullptr), v_pack(a, nullptr, a.v + kv_offset);
    const int64_t kp = RoundUp(a.keys, kVec), dp = RoundUp(a.head_dim, kVec);
    std::vector<float> q_blk, scores(kQueryBlock * kp), o_blk(kQueryBlock * dp), inv_sum(kQueryBlock);
    for (int64_t q0 = q_begin; q0 < q_end; q0 += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, q_end - q0), rows_pad = RoundUp(rows, kTileRows);
      PackRows(a.q + b * a.q_batch + q0 * a.q_row + h * a.head_dim, a.q_row, rows, a.head_dim, dp,
               scale, &q_blk);
      Gemm(rows_pad, kp, a.head_dim, q_blk.data(), dp, k_pack.t.data(), kp, scores.data(), kp, false);
      for (int64_t r = 0; r < rows; ++r) {
        float *s = scores.data() + r * kp;
        const float max = RowMax(s, a.keys);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t j = 0; j < a.keys; ++j) {
          s[j] = ExpNonPositive(s[j] - max);
          sum += s[j];
        }
        for (int64_t j = a.keys; j < kp; ++j) s[j] = 0.f;
        inv_sum[r] = 1.f / sum;
        lse[pair * a.queries + q0 + r] = max + std::log(sum);
      }
      Gemm(rows_pad, dp, kp, scores.data(), kp, v_pack.rows.data(), dp, o_blk.data(), dp, false);
      for (int64_t r = 0; r < rows; ++r) {
        float *dst = out + b * out_batch + (q0 + r) * out_row + h * a.head_dim;
        const float *o = o_blk.data() + r * dp;
        for (int64_t c = 0; c < a.head_dim; ++c) dst[c] = o[c] * inv_sum[r];
      }
    }
  });
}

// dq, dk and dv with the strides of q, k and v. With P = softmax(S), S = (scale q) k^T:
// dv = P^T dout, dP = dout v^T, dS = P * (dP - rowsum(dout * out)), dq = scale dS k,
// dk = dS^T (scale q). dk and dv sum over query blocks: per task in scratch, then added up
// per (batch, head) so no two threads write the same rows.
void AttentionBackward(const AttentionViews &a, const float *out, const float *lse,
                       const float *dout, float *dq, float *dk, float *dv) {
  const int64_t parts = QueryParts(a);
  const float scale = 1.f / std::sqrt(static_cast<float>(a.head_dim));
  const int64_t out_row = a.heads * a.head_dim, out_batch = a.queries * out_row;
  const int64_t kp = RoundUp(a.keys, kVec), dp = RoundUp(a.head_dim, kVec);
  const int64_t tasks = a.batch * a.heads * parts;
  // per task: dk then dv, [keys_pad][dim_pad] each
  std::vector<float> partial(tasks * 2 * kp * dp);
  ParallelFor(tasks, [&](int64_t task) {
    const int64_t pair = task / parts, part = task % parts;
    const int64_t b = pair / a.heads, h = pair % a.heads;
    const int64_t q_begin = a.queries * part / parts, q_end = a.queries * (part + 1) / parts;
    const int64_t kv_offset = b * a.kv_batch + h * a.head_dim;
    const HeadPack k_pack(a, a.k + kv_offset, a.k + kv_offset), v_pack(a, a.v + kv_offset, nullptr);
    float *dk_acc = partial.data() + task * 2 * kp * dp;
    float *dv_acc = dk_acc + kp * dp;
    std::fill(dk_acc, dk_acc + 2 * kp * dp, 0.f);
    std::vector<float> q_blk, do_blk, probs(kQueryBlock * kp), dscores(kQueryBlock * kp);
    std::vector<float> transposed(kp * kQueryBlock), dq_blk(kQueryBlock * dp), delta(kQueryBlock);
    for (int64_t q0 = q_begin; q0 < q_end; q0 += kQueryBlock) {
      const int64_t rows = std::min(kQueryBlock, q_end - q0), rows_pad = RoundUp(rows, kTileRows);
      const int64_t q_offset = b * a.q_batch + q0 * a.q_row + h * a.head_dim;
      const int64_t o_offset = b * out_batch + q0 * out_row + h * a.head_dim;
      PackRows(a.q + q_offset, a.q_row, rows, a.head_dim, dp, scale, &q_blk);
      PackRows(dout + o_offset, out_row, rows, a.head_dim, dp, 1.f, &do_blk);
      for (int64_t r = 0; r < rows; ++r) {
        const float *o = out + o_offset + r * out_row;
        const float *g = do_blk.data() + r * dp;
        float sum = 0.f;
        for (int64_t c = 0; c < a.head_dim; ++c) sum += o[c] * g[c];
        delta[r] = sum;
      }
      Gemm(rows_pad, kp, a.head_dim, q_blk.data(), dp, k_pack.t.data(), kp, probs.data(), kp, false);
      Gemm(rows_pad, kp, a.head_dim, do_blk.data(), dp, v_pack.t.data(), kp, dscores.data(), kp, false);
      for (int64_t r = 0; r < rows_pad; ++r) {
        float *p = probs.data() + r * kp;
        float *ds = dscores.data() + r * kp;
        if (r >= rows) {
          std::fill(p, p + kp, 0.f);
          std::fill(ds, ds + kp, 0.f);
          continue;
        }
        const float row_lse = lse[pair * a.queries + q0 + r];
#pragma omp simd
        for (int64_t j = 0; j < a.keys; ++j) {
          p[j] = ExpNonPositive(std::min(p[j] - row_lse, 0.f));
          ds[j] = p[j] * (ds[j] - delta[r]);
        }
        for (int64_t j = a.keys; j < kp; ++j) p[j] = ds[j] = 0.f;
      }
      // dq = scale * dS k
      Gemm(rows_pad, dp, kp, dscores.data(), kp, k_pack.rows.data(), dp, dq_blk.data(), dp, false);
      for (int64_t r = 0; r < rows; ++r) {
        float *dst = dq + q_offset + r * a.q_row;
        for (int64_t c = 0; c < a.head_dim; ++c) dst[c] = dq_blk[r * dp + c] * scale;
      }
      // dv += P^T dout, dk += dS^T (scale q)
      TransposeBlock(probs.data(), rows_pad, kp, kp, transposed.data(), rows_pad);
      Gemm(kp, dp, rows_pad, transposed.data(), rows_pad, do_blk.data(), dp, dv_acc, dp, true);
      TransposeBlock(dscores.data(), rows_pad, kp, kp, transposed.data(), rows_pad);
      Gemm(kp, dp, rows_pad, transposed.data(), rows_pad, q_blk.data(), dp, dk_acc, dp, true);
    }
  });
  ParallelFor(a.batch * a.heads, [&](int64_t pair) {
    const int64_t b = pair / a.heads, h = pair % a.heads;
    for (int64_t j = 0; j < a.keys; ++j) {
      float *dk_row = dk + b * a.kv_batch + j * a.kv_row + h * a.head_dim;
      float *dv_row = dv + b * a.kv_batch + j * a.kv_row + h * a.head_dim;
      for (int64_t c = 0; c < a.head_dim; ++c) {
        float sum_k = 0.f, sum_v = 0.f;
        for (int64_t part = 0; part < parts; ++part) {
          const float *acc = partial.data() + (pair * parts + part) * 2 * kp * dp;
          sum_k += acc[j * dp + c];
          sum_v += acc[kp * dp + j * dp + c];
        }
        dk_row[c] = sum_k;
        dv_row[c] = sum_v;
      }
    }
  });
}

// q [B, Nq, H, d] and kv [B, Nk, 2, H, d]; false if the shapes do not fit together.
bool CrossViews(int *ndims, int64_t **shapes, void **params, AttentionViews *a) {
  if (ndims[0] != 4 || ndims[1] != 5) return false;
  const int64_t *q = shapes[0], *kv = shapes[1];
  if (kv[0] != q[0] || kv[2] != 2 || kv[3] != q[2] || kv[4] != q[3] || kv[1] < 1) return false;
  const float *kv_data = static_cast<const float *>(params[1]);
  const int64_t slot = q[2] * q[3];
  *a = AttentionViews{static_cast<const float *>(params[0]), kv_data, kv_data + slot,
                      slot, q[1] * slot, 2 * slot, kv[1] * 2 * slot, q[0], q[1], kv[1], q[2], q[3]};
  return true;
}

// qkv [B, N, 3, H, d]; false if it is not that.
bool SelfViews(int *ndims, int64_t **shapes, void **params, AttentionViews *a) {
  if (ndims[0] != 5 || shapes[0][2] != 3 || shapes[0][1] < 1) return false;
  const int64_t *s = shapes[0];
  const float *qkv = static_cast<const float *>(params[0]);
  const int64_t slot = s[3] * s[4];
  *a = AttentionViews{qkv, qkv + slot, qkv + 2 * slot, 3 * slot, s[1] * 3 * slot, 3 * slot,
                      s[1] * 3 * slot, s[0], s[1], s[1], s[3], s[4]};
  return true;
}

// y[a, n, m, :] = x[a, m, n, :] for x [A, M, N, K] (K contiguous floats move together): the
// layout changes of the models (tokens <-> NCHW maps, non-overlapping patch gathers) as one
// copy, without MindSpore's CPU Transpose and its 8 B/element index table.
void CopySwappingMiddleAxes(const float *x, float *y, int64_t outer, int64_t m, int64_t n, int64_t k) {
  if (k == 1) {
    ParallelFor(outer, [&](int64_t a) { TransposeBlock(x + a * m * n, m, n, n, y + a * m * n, m); });
    return;
  }
  ParallelFor(outer * n, [&](int64_t row) {
    const int64_t a = row / n, j = row % n;
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(y + ((a * n + j) * m + i) * k, x + ((a * m + i) * n + j) * k, k * sizeof(float));
    }
  });
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

// Bilinear resize of NCHW planes x [N, C, h, w] to y [N, C, H, W], align_corners=False;
// with `base` (same shape as y) y = base + resize(x).
void ResizePlanes(const float *x, const float *base, float *y, int64_t planes, int64_t in_h,
                  int64_t in_w, int64_t out_h, int64_t out_w) {
  const Taps rows = BilinearTaps(out_h, in_h), cols = BilinearTaps(out_w, in_w);
  ParallelFor(planes * out_h, [&](int64_t row) {
    const int64_t p = row / out_h, i = row % out_h;
    const float *top = x + (p * in_h + rows.low[i]) * in_w;
    const float *bottom = x + (p * in_h + rows.high[i]) * in_w;
    const float fy = rows.frac[i];
    float *dst = y + row * out_w;
    const float *add = base != nullptr ? base + row * out_w : nullptr;
    for (int64_t j = 0; j < out_w; ++j) {
      const int64_t a = cols.low[j], b = cols.high[j];
      const float fx = cols.frac[j];
      const float t = top[a] + (top[b] - top[a]) * fx;
      const float u = bottom[a] + (bottom[b] - bottom[a]) * fx;
      dst[j] = (add != nullptr ? add[j] : 0.f) + t + (u - t) * fy;
    }
  });
}

// params: x [N, C, h, w], like [..., H, W] (only its shape is read: the output size), y [N, C, H, W]
int ResizeBilinear(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                   void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[2] != 4) return 1;
  if (std::strcmp(dtypes[0], "float32") != 0 || std::strcmp(dtypes[2], "float32") != 0) return 1;
  const int64_t *in = shapes[0], *out = shapes[2];
  ResizePlanes(static_cast<const float *>(params[0]), nullptr, static_cast<float *>(params[2]),
               in[0] * in[1], in[2], in[3], out[2], out[3]);
  return 0;
}

// y = base + resize(x): the SegFormer head sums four upsampled maps; adding each into the
// running sum as it is resized keeps one full-resolution map alive instead of four.
// params: x [N, C, h, w], base [N, C, H, W], y [N, C, H, W]
int ResizeBilinearAdd(int nparam, void **params, int *ndims, int64_t **shapes,
                      const char **dtypes, void *, void *) {
  if (nparam != 3 || ndims[0] != 4 || ndims[1] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t *in = shapes[0], *out = shapes[1];
  if (in[0] != out[0] || in[1] != out[1]) return 1;
  ResizePlanes(static_cast<const float *>(params[0]), static_cast<const float *>(params[1]),
               static_cast<float *>(params[2]), in[0] * in[1], in[2], in[3], out[2], out[3]);
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

// Attention of q [B, Nq, H, d] over the keys and values of kv [B, Nk, 2, H, d] (k, then v:
// MiT's fused kv Linear), scale 1/sqrt(d).     params: q, kv, out [B, Nq, H, d], lse [B, H, Nq]
int Attention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
              void *, void *) {
  AttentionViews a;
  if (nparam != 4 || !AllFloat32(nparam, dtypes) || !CrossViews(ndims, shapes, params, &a)) return 1;
  AttentionForward(a, static_cast<float *>(params[2]), static_cast<float *>(params[3]));
  return 0;
}

// params: q, kv, out, lse, dout, dq [B, Nq, H, d], dkv [B, Nk, 2, H, d]
int AttentionGrad(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                  void *, void *) {
  AttentionViews a;
  if (nparam != 7 || !AllFloat32(nparam, dtypes) || !CrossViews(ndims, shapes, params, &a)) return 1;
  float *dkv = static_cast<float *>(params[6]);
  AttentionBackward(a, static_cast<const float *>(params[2]), static_cast<const float *>(params[3]),
                    static_cast<const float *>(params[4]), static_cast<float *>(params[5]), dkv,
                    dkv + a.heads * a.head_dim);
  return 0;
}

// Self-attention over qkv [B, N, 3, H, d] (q, k, v: ViT's fused qkv Linear), scale 1/sqrt(d).
// params: qkv, out [B, N, H, d], lse [B, H, N]
int SelfAttention(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                  void *, void *) {
  AttentionViews a;
  if (nparam != 3 || !AllFloat32(nparam, dtypes) || !SelfViews(ndims, shapes, params, &a)) return 1;
  AttentionForward(a, static_cast<float *>(params[1]), static_cast<float *>(params[2]));
  return 0;
}

// params: qkv, out, lse, dout, dqkv [B, N, 3, H, d]
int SelfAttentionGrad(int nparam, void **params, int *ndims, int64_t **shapes,
                      const char **dtypes, void *, void *) {
  AttentionViews a;
  if (nparam != 5 || !AllFloat32(nparam, dtypes) || !SelfViews(ndims, shapes, params, &a)) return 1;
  float *dqkv = static_cast<float *>(params[4]);
  const int64_t slot = a.heads * a.head_dim;
  AttentionBackward(a, static_cast<const float *>(params[1]), static_cast<const float *>(params[2]),
                    static_cast<const float *>(params[3]), dqkv, dqkv + slot, dqkv + 2 * slot);
  return 0;
}

// params: x [A, M, N, K], y [A, N, M, K]
int SwapMiddleAxes(int nparam, void **params, int *ndims, int64_t **shapes, const char **dtypes,
                   void *, void *) {
  if (nparam != 2 || ndims[0] != 4 || ndims[1] != 4 || !AllFloat32(nparam, dtypes)) return 1;
  const int64_t *in = shapes[0];
  CopySwappingMiddleAxes(static_cast<const float *>(params[0]), static_cast<float *>(params[1]), in[0],
                 in[1], in[2], in[3]);
  return 0;
}

}  // extern "C"
