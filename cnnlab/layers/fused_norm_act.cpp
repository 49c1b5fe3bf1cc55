// Training-mode BatchNorm2d + ReLU (+ a residual added before the ReLU) in two passes over memory,
// for fp32 or bf16 channels_last maps on the CPU. cnnlab/layers/fused.py builds it at first use and says why.
//
// A channels_last (N, C, H, W) map is M = N*H*W rows of C channels in memory, so every loop below walks
// rows and, inside a row, the C channels a vector unit takes in one go. Forward reads x twice (statistics,
// then output) and writes y once; backward reads the gradient and x twice (sums, then the input gradient)
// and writes the input gradient once, where torch's BatchNorm, ReLU and addition take separate passes.
// The maps are T: float, or bf16 under bf16 autocast, held as its 16 bits (uint16_t) and converted by the
// bit operations below, which the compiler vectorises (c10::BFloat16's conversions, called per element, ran
// the kernel 13x slower than fp32's). All arithmetic is in float, the statistics and the norm's scale and shift
// are float, and a bf16 result is rounded once, to nearest even, as torch rounds.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

inline float load(const float* p, int64_t c) { return p[c]; }

inline float load(const uint16_t* p, int64_t c) {  // bf16 -> float: the 16 bits are float's upper half
  const uint32_t bits = static_cast<uint32_t>(p[c]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline void store(float* p, int64_t c, float value) { p[c] = value; }

inline void store(uint16_t* p, int64_t c, float value) {  // float -> bf16, rounded to nearest even; NaN stays NaN
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  p[c] = value != value ? static_cast<uint16_t>(0x7FC0) : static_cast<uint16_t>(bits >> 16);
}

// A map's elements as T: float for float32, uint16_t (its bits) for bfloat16.
template <typename T>
T* elements(const torch::Tensor& t) {
  if constexpr (std::is_same_v<T, float>) {
    return t.data_ptr<float>();
  } else {
    return reinterpret_cast<uint16_t*>(t.data_ptr<c10::BFloat16>());
  }
}

constexpr int64_t GRAIN = 2048;  // rows per parallel task, at least
constexpr int64_t CHUNK = 256;   // rows summed in float before the sums move to double

// Per-channel sums over all rows of two row functions, add(i, a, b) adding row i's terms to a[0:C] and
// b[0:C]: float within CHUNK rows (vectorised), double across chunks and threads (no drift over 10^5 rows).
// Each thread's partial sums are added in thread order, so a fixed thread count gives fixed results.
template <typename RowTerms>
void channel_sums(int64_t M, int64_t C, RowTerms add, std::vector<double>& sum_a, std::vector<double>& sum_b) {
  const int threads = at::get_num_threads();
  std::vector<double> part_a(threads * C, 0.0), part_b(threads * C, 0.0);
  at::parallel_for(0, M, GRAIN, [&](int64_t begin, int64_t end) {
    double* a_total = part_a.data() + at::get_thread_num() * C;
    double* b_total = part_b.data() + at::get_thread_num() * C;
    std::vector<float> a(C), b(C);
    for (int64_t first = begin; first < end; first += CHUNK) {
      std::fill(a.begin(), a.end(), 0.f);
      std::fill(b.begin(), b.end(), 0.f);
      for (int64_t i = first; i < std::min(end, first + CHUNK); ++i) add(i, a.data(), b.data());
      for (int64_t c = 0; c < C; ++c) {
        a_total[c] += a[c];
        b_total[c] += b[c];
      }
    }
  });
  sum_a.assign(C, 0.0);
  sum_b.assign(C, 0.0);
  for (int t = 0; t < threads; ++t) {
    for (int64_t c = 0; c < C; ++c) {
      sum_a[c] += part_a[t * C + c];
      sum_b[c] += part_b[t * C + c];
    }
  }
}

// ReLU as torch's: NaN stays NaN (std::max(0.f, NaN) gives 0, and a diverged run would read as a healthy one)
inline float relu(float v) { return v < 0.f ? 0.f : v; }

// The ReLU's gradient mask at its input v, as torch's threshold_backward: zero where v <= 0, so a NaN passes the
// gradient on as torch's does (a NaN > 0 test would zero it)
inline float relu_grad(float v, float grad) { return v <= 0.f ? 0.f : grad; }

// y = relu((x - mean) * scale + bias (+ residual)), row by row. x - mean first: with x * scale + (bias - mean *
// scale) a mean far from 0 would cancel in the addition, as it does not in the subtraction.
template <typename T, bool RESIDUAL>
void normalise(const T* x, const T* residual, T* y, const float* mean, const float* scale, const float* bias,
               int64_t M, int64_t C) {
  at::parallel_for(0, M, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* xi = x + i * C;
      const T* ri = RESIDUAL ? residual + i * C : nullptr;
      T* yi = y + i * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float r = RESIDUAL ? load(ri, c) : 0.f;
        store(yi, c, relu((load(xi, c) - mean[c]) * scale[c] + bias[c] + r));
      }
    }
  });
}

template <typename T>
std::vector<torch::Tensor> forward_impl(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                                        const c10::optional<torch::Tensor>& residual, double eps) {
  const int64_t C = x.size(1), M = x.numel() / C;
  const T* xp = elements<T>(x);
  // Sums of x - k and (x - k)^2 with k the first row's value: var = E[(x-k)^2] - E[x-k]^2 cancels nothing when k
  // lies within the data, however far the mean is from 0 (float sums of x^2 lose the variance when it is small
  // beside mean^2, and a chunk's sums are float).
  std::vector<float> k(C);
  for (int64_t c = 0; c < C; ++c) k[c] = load(xp, c);
  const float* kp = k.data();
  std::vector<double> sum, sum_sq;
  channel_sums(M, C, [&](int64_t i, float* a, float* s) {
    const T* xi = xp + i * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float d = load(xi, c) - kp[c];
      a[c] += d;
      s[c] += d * d;
    }
  }, sum, sum_sq);

  const auto stats = x.options().dtype(torch::kFloat);
  auto mean = torch::empty({C}, stats);
  auto invstd = torch::empty({C}, stats);
  auto unbiased = torch::empty({C}, stats);
  float* mu = mean.data_ptr<float>();
  float* is = invstd.data_ptr<float>();
  float* uv = unbiased.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  std::vector<float> scale(C);
  for (int64_t c = 0; c < C; ++c) {
    const double shifted = sum[c] / M;  // mean - k
    const double m = kp[c] + shifted;
    // rounding may leave a variance a little below 0: clamped, but a NaN (a NaN or inf in x) is kept, as torch's
    const double raw_var = sum_sq[c] / M - shifted * shifted;
    const double var = raw_var < 0.0 ? 0.0 : raw_var;
    const double inv = 1.0 / std::sqrt(var + eps);
    mu[c] = static_cast<float>(m);
    is[c] = static_cast<float>(inv);
    uv[c] = static_cast<float>(var * M / std::max<int64_t>(M - 1, 1));  // what running_var averages, as torch's
    scale[c] = w[c] * is[c];  // in float, as backward computes it again for the ReLU's mask
  }
  auto y = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  if (residual) {
    normalise<T, true>(xp, elements<T>(*residual), elements<T>(y), mu, scale.data(), b, M, C);
  } else {
    normalise<T, false>(xp, nullptr, elements<T>(y), mu, scale.data(), b, M, C);
  }
  return {y, mean, invstd, unbiased};
}

// The ReLU's gradient mask, where its input was > 0. With a residual it comes from the saved output
// (y > 0 exactly when the input was); without, it is recomputed from x, which backward reads anyway,
// so y need not be read at all.
template <typename T, bool RESIDUAL>
std::vector<torch::Tensor> backward_impl(const torch::Tensor& grad, const torch::Tensor& x, const torch::Tensor& y,
                                         const torch::Tensor& weight, const torch::Tensor& bias,
                                         const torch::Tensor& mean, const torch::Tensor& invstd) {
  const int64_t C = x.size(1), M = x.numel() / C;
  const T* g = elements<T>(grad);
  const T* xp = elements<T>(x);
  const T* yp = RESIDUAL ? elements<T>(y) : nullptr;
  const float* mu = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  std::vector<float> scale(C);
  for (int64_t c = 0; c < C; ++c) scale[c] = w[c] * is[c];
  const float* sc = scale.data();

  // Pass 1: the masked gradient's sum (the bias gradient) and its sum against x - mean.
  std::vector<double> sum_g, sum_gx;
  channel_sums(M, C, [&](int64_t i, float* a, float* s) {
    const T* gi = g + i * C;
    const T* xi = xp + i * C;
    const T* yi = RESIDUAL ? yp + i * C : nullptr;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float xc = load(xi, c) - mu[c];
      const float gm = relu_grad(RESIDUAL ? load(yi, c) : xc * sc[c] + b[c], load(gi, c));
      a[c] += gm;
      s[c] += gm * xc;
    }
  }, sum_g, sum_gx);

  const auto stats = x.options().dtype(torch::kFloat);
  auto grad_weight = torch::empty({C}, stats);
  auto grad_bias = torch::empty({C}, stats);
  float* gw = grad_weight.data_ptr<float>();
  float* gb = grad_bias.data_ptr<float>();
  // dx = k1 * gm - k2 - k3 * (x - mean): BatchNorm's training-mode input gradient with the batch's
  // mean and variance depending on x, k1 = w * invstd, k2 = k1 * mean(gm), k3 = k1 * invstd^2 * mean(gm * (x - mean)).
  std::vector<float> k1(C), k2(C), k3(C);
  for (int64_t c = 0; c < C; ++c) {
    const double k = static_cast<double>(w[c]) * is[c];
    gb[c] = static_cast<float>(sum_g[c]);
    gw[c] = static_cast<float>(sum_gx[c] * is[c]);
    k1[c] = static_cast<float>(k);
    k2[c] = static_cast<float>(k * sum_g[c] / M);
    k3[c] = static_cast<float>(k * is[c] * is[c] * sum_gx[c] / M);
  }

  // Pass 2: the input gradient, and with a residual the residual's gradient (the masked gradient itself).
  auto grad_x = torch::empty_like(x, at::MemoryFormat::ChannelsLast);
  torch::Tensor grad_residual = RESIDUAL ? torch::empty_like(x, at::MemoryFormat::ChannelsLast) : torch::Tensor();
  T* gx = elements<T>(grad_x);
  T* gr = RESIDUAL ? elements<T>(grad_residual) : nullptr;
  const float* k1p = k1.data();
  const float* k2p = k2.data();
  const float* k3p = k3.data();
  at::parallel_for(0, M, GRAIN, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* gi = g + i * C;
      const T* xi = xp + i * C;
      const T* yi = RESIDUAL ? yp + i * C : nullptr;
      T* gxi = gx + i * C;
      T* gri = RESIDUAL ? gr + i * C : nullptr;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float xc = load(xi, c) - mu[c];
        const float gm = relu_grad(RESIDUAL ? load(yi, c) : xc * sc[c] + b[c], load(gi, c));
        if (RESIDUAL) store(gri, c, gm);
        store(gxi, c, k1p[c] * gm - k2p[c] - k3p[c] * xc);
      }
    }
  });
  return {grad_x, grad_weight, grad_bias, grad_residual};
}

void check_map(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && (t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kBFloat16) &&
              t.scalar_type() == x.scalar_type() && t.dim() == 4 && t.sizes() == x.sizes() &&
              t.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, " must be a float32 or bfloat16 channels_last (N, C, H, W) CPU tensor of x's shape and dtype");
}

void check_params(const torch::Tensor& t, const torch::Tensor& x, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.dim() == 1 && t.size(0) == x.size(1) &&
              t.is_contiguous(), name, " must be a contiguous float32 CPU vector of x's channels");
}

}  // namespace

// (y, mean, invstd, unbiased variance): y = relu(batch_norm(x) (+ residual)) with the batch's statistics.
std::vector<torch::Tensor> forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                                   c10::optional<torch::Tensor> residual, double eps) {
  check_map(x, x, "x");
  if (residual) check_map(*residual, x, "residual");
  check_params(weight, x, "weight");
  check_params(bias, x, "bias");
  if (x.scalar_type() == torch::kBFloat16) return forward_impl<uint16_t>(x, weight, bias, residual, eps);
  return forward_impl<float>(x, weight, bias, residual, eps);
}

// (grad_x, grad_weight, grad_bias, grad_residual or an undefined tensor) for forward's y.
std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor y, torch::Tensor weight,
                                    torch::Tensor bias, torch::Tensor mean, torch::Tensor invstd, bool residual) {
  check_map(x, x, "x");
  // A global pool's backward hands back NCHW; autograd's gradient has y's dtype, x's
  auto g = grad.to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
  if (residual) check_map(y, x, "y");
  if (x.scalar_type() == torch::kBFloat16) {
    if (residual) return backward_impl<uint16_t, true>(g, x, y, weight, bias, mean, invstd);
    return backward_impl<uint16_t, false>(g, x, y, weight, bias, mean, invstd);
  }
  if (residual) return backward_impl<float, true>(g, x, y, weight, bias, mean, invstd);
  return backward_impl<float, false>(g, x, y, weight, bias, mean, invstd);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "BatchNorm2d (training) + ReLU, optionally with a residual before the ReLU");
  m.def("backward", &backward, "gradients of forward");
}
