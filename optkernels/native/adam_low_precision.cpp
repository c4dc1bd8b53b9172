// The Adam-family step over low-precision state, one pass over memory, for CPU tensors:
// optkernels.adam.adam_low_precision_rule written as one loop, which the C++ compiler
// vectorizes (built and loaded by optkernels/_native.py; no torch headers, plain C ABI).
//
// The numbers are those of the rule in optkernels/adam.py, op for op in float32, with no fused
// multiply-add (built with -ffp-contract=off, as inductor builds the compiled rule); the codes
// those of optkernels.quantization's quantiser (the e4m3 cast rounds to nearest, ties to even);
// the stochastic rounding's bits those of optkernels.quantization.random_bits. The tests check
// all three against the Python functions.
//
// A tensor is read in blocks of 256 elements (the quantiser's blocks): each block's new moments
// stay in a stack buffer until its absmax is known, then are encoded, so the codes are read and
// written once. Blocks are shared among threads.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

constexpr int64_t kBlock = 256;
constexpr float kFp8Max = 448.0f;

struct Options {
  float one_minus_beta1, beta2, one_minus_beta2, eps, step_size, grad_step_size, rsqrt_bias_correction2,
      grad_decay, param_factor;
  int32_t negate, decays_grad, scales_param, stochastic_rounding, update, belief, nesterov, threads;
  uint32_t key_exp_avg, key_exp_avg_sq, key_param;
};
enum Update : int32_t { kAdaptive = 0, kMomentumOnly = 1, kNone = 2 };

inline uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

// Options are masks (all bits set or none) and choose by bits: a select on a loop-invariant bool
// does not vectorize in gcc 12, a bitwise one does; either gives the chosen value exactly.
inline uint32_t mask(bool on) { return on ? 0xFFFFFFFFu : 0u; }
inline float pick(uint32_t mask, float if_set, float otherwise) {
  return float_of((bits_of(if_set) & mask) | (bits_of(otherwise) & ~mask));
}

// optkernels.quantization.random_bits, element `index` of the call with `key`
inline uint32_t random_bits(uint32_t index, uint32_t key) {
  uint32_t h = index * 0x7FEB352Du + key;
  h ^= h >> 16;
  h *= 0x5BD1E995u;
  h ^= h >> 15;
  h *= 0x27D4EB2Du;
  return (h ^ (h >> 16)) & 0xFFFFu;
}

inline float bf16_value(uint16_t b) { return float_of(uint32_t(b) << 16); }
inline uint16_t bf16_stochastic(float x, uint32_t random) { return uint16_t((bits_of(x) + random) >> 16); }
inline uint16_t bf16_nearest(float x) {  // torch's float -> bfloat16 cast
  uint32_t u = bits_of(x);
  return x != x ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// e4m3 code -> value, exact (the two NaN codes are never written)
inline float e4m3_value(uint8_t code) {
  uint32_t exponent = (code >> 3) & 15u, mantissa = code & 7u;
  float normal = float_of(((exponent + 120u) << 23) | (mantissa << 20));
  float subnormal = float(int32_t(mantissa)) * (1.0f / 512.0f);
  float value = exponent ? normal : subnormal;
  return (code & 0x80u) ? -value : value;
}

// value (|x| <= 448) -> e4m3 code, rounded to nearest, ties to even: torch's cast to float8_e4m3fn
inline uint8_t e4m3_code(float x) {
  uint32_t u = bits_of(x), sign = (u >> 24) & 0x80u, magnitude = u & 0x7FFFFFFFu;
  // normal codes (|x| >= 2**-6): the float32 exponent and top 3 mantissa bits, rounded, rebiased
  uint32_t normal = ((magnitude + 0x7FFFFu + ((magnitude >> 20) & 1u)) >> 20) - (120u << 3);
  // subnormal codes: |x| * 2**9 (exact) rounded to an integer by the 1.5 * 2**23 trick, in 0..8
  float scaled = float_of(magnitude) * 512.0f;
  uint32_t subnormal = uint32_t(int32_t((scaled + 12582912.0f) - 12582912.0f));
  return uint8_t((magnitude >= 0x3C800000u ? normal : subnormal) | sign);
}

struct F32 {
  using Storage = float;
  static float load(const float* p, int64_t i) { return p[i]; }
};
struct BF16 {
  using Storage = uint16_t;
  static float load(const uint16_t* p, int64_t i) { return bf16_value(p[i]); }
};

// Param (and grad) storage P: F32 or BF16. State storage S: F32, BF16 or Codes (8-bit blockwise).
struct Codes {
  using Storage = uint8_t;
};

// Distinct tensors (the caller checks), hence __restrict: stores to one cannot change the others.
template <class P, class S>
void block_step(typename P::Storage* __restrict param, const typename P::Storage* __restrict grad,
                typename S::Storage* __restrict exp_avg, typename S::Storage* __restrict exp_avg_sq,
                float* __restrict exp_avg_scale, float* __restrict exp_avg_sq_scale, int64_t start, int64_t count,
                const Options& o) {
  // Every option is a select (pick), never a branch, so that the loop vectorizes; the selected
  // value is the one the Python rule computes.
  constexpr bool quantized = std::is_same<S, Codes>::value;
  // the options as locals: the compiler cannot prove that the stores below leave `o` alone
  const float one_minus_beta1 = o.one_minus_beta1, beta2 = o.beta2, one_minus_beta2 = o.one_minus_beta2,
              eps = o.eps, step_size = o.step_size, grad_step_size = o.grad_step_size,
              rsqrt_bias_correction2 = o.rsqrt_bias_correction2, grad_decay = o.grad_decay,
              param_factor = o.param_factor;
  const uint32_t negate = mask(o.negate), decays_grad = mask(o.decays_grad), scales_param = mask(o.scales_param),
                 stochastic_rounding = mask(o.stochastic_rounding), belief = mask(o.belief),
                 nesterov = mask(o.nesterov), adaptive_update = mask(o.update == kAdaptive),
                 no_update = mask(o.update == kNone);
  const uint32_t key_exp_avg = o.key_exp_avg, key_exp_avg_sq = o.key_exp_avg_sq, key_param = o.key_param;
  float new_exp_avg[kBlock], new_root[kBlock];  // m_t and sqrt(v_t), quantised once the block is done
  float exp_avg_scale_old = 0.0f, exp_avg_sq_scale_old = 0.0f;
  if constexpr (quantized) {
    exp_avg_scale_old = exp_avg_scale[start / kBlock];
    exp_avg_sq_scale_old = exp_avg_sq_scale[start / kBlock];
  }
  uint32_t exp_avg_absmax_bits = 0, root_absmax_bits = 0;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t i = start + j;
    float g = P::load(grad, i);
    float p = P::load(param, i);
    g = pick(negate, -g, g);
    g = pick(decays_grad, g + p * grad_decay, g);
    p = pick(scales_param, p * param_factor, p);
    float m, v;
    if constexpr (quantized) {
      m = e4m3_value(exp_avg[i]) * exp_avg_scale_old;
      float root = e4m3_value(exp_avg_sq[i]) * exp_avg_sq_scale_old;
      v = root * root;
    } else {
      m = S::load(exp_avg, i);
      v = S::load(exp_avg_sq, i);
    }
    m = m + (g - m) * one_minus_beta1;
    float deviation = pick(belief, g - m, g);  // AdaBelief's s_t, or Adam's v_t
    v = v * beta2 + deviation * (deviation * one_minus_beta2);
    v = pick(belief, v + eps, v);
    float root = std::sqrt(v);
    float denom = root * rsqrt_bias_correction2 + eps;
    float ratio = pick(nesterov, g * grad_step_size + m * step_size, m) / denom;
    float adaptive = p - pick(nesterov, ratio, ratio * step_size);
    p = pick(no_update, p, pick(adaptive_update, adaptive, p - m * step_size));
    if constexpr (std::is_same<P, F32>::value) {
      param[i] = p;
    } else {
      uint32_t stochastic = bf16_stochastic(p, random_bits(uint32_t(i), key_param)), nearest = bf16_nearest(p);
      param[i] = uint16_t((stochastic & stochastic_rounding) | (nearest & ~stochastic_rounding));
    }
    if constexpr (quantized) {
      new_exp_avg[j] = m;
      new_root[j] = root;
      // |x|'s bits order as |x| does, NaN above all: an integer max is torch's amax, NaN included
      uint32_t exp_avg_magnitude = bits_of(m) & 0x7FFFFFFFu, root_magnitude = bits_of(root) & 0x7FFFFFFFu;
      exp_avg_absmax_bits = exp_avg_magnitude > exp_avg_absmax_bits ? exp_avg_magnitude : exp_avg_absmax_bits;
      root_absmax_bits = root_magnitude > root_absmax_bits ? root_magnitude : root_absmax_bits;
    } else if constexpr (std::is_same<S, F32>::value) {
      exp_avg[i] = m;
      exp_avg_sq[i] = v;
    } else {
      exp_avg[i] = bf16_stochastic(m, random_bits(uint32_t(i), key_exp_avg));
      exp_avg_sq[i] = bf16_stochastic(v, random_bits(uint32_t(i), key_exp_avg_sq));
    }
  }
  if constexpr (quantized) {
    const float exp_avg_absmax = float_of(exp_avg_absmax_bits), root_absmax = float_of(root_absmax_bits);
    float exp_avg_new_scale = exp_avg_absmax / kFp8Max, root_new_scale = root_absmax / kFp8Max;
    // a block of zeros divides by 1 (its codes are 0 whatever the divisor), keeping scale 0
    float exp_avg_divisor = exp_avg_absmax > 0.0f ? exp_avg_new_scale : 1.0f;
    float root_divisor = root_absmax > 0.0f ? root_new_scale : 1.0f;
    uint8_t* exp_avg_codes = exp_avg + start;
    uint8_t* exp_avg_sq_codes = exp_avg_sq + start;
    for (int64_t j = 0; j < count; ++j) {
      float scaled = new_exp_avg[j] / exp_avg_divisor;
      scaled = scaled < -kFp8Max ? -kFp8Max : scaled;
      exp_avg_codes[j] = e4m3_code(scaled > kFp8Max ? kFp8Max : scaled);
      float root_scaled = new_root[j] / root_divisor;
      exp_avg_sq_codes[j] = e4m3_code(root_scaled > kFp8Max ? kFp8Max : root_scaled);
    }
    exp_avg_scale[start / kBlock] = exp_avg_new_scale;
    exp_avg_sq_scale[start / kBlock] = root_new_scale;
  }
}

template <class P, class S>
void step(void* param, const void* grad, void* exp_avg, void* exp_avg_sq, float* exp_avg_scale,
          float* exp_avg_sq_scale, int64_t numel, const Options* options) {
  const Options o = *options;
  const int64_t blocks = (numel + kBlock - 1) / kBlock;
  auto* p = static_cast<typename P::Storage*>(param);
  auto* g = static_cast<const typename P::Storage*>(grad);
  auto* m = static_cast<typename S::Storage*>(exp_avg);
  auto* v = static_cast<typename S::Storage*>(exp_avg_sq);
#pragma omp parallel for num_threads(o.threads) schedule(static) if (o.threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t start = b * kBlock;
    block_step<P, S>(p, g, m, v, exp_avg_scale, exp_avg_sq_scale, start,
                     numel - start < kBlock ? numel - start : kBlock, o);
  }
}

}  // namespace

// Entry points, one per (param dtype, state storage): optkernels/_native.py names them.
#define OPTKERNELS_ENTRY(NAME, P, S)                                                                     \
  extern "C" void NAME(void* param, const void* grad, void* exp_avg, void* exp_avg_sq, float* exp_avg_scale, \
                       float* exp_avg_sq_scale, int64_t numel, const Options* options) {                  \
    step<P, S>(param, grad, exp_avg, exp_avg_sq, exp_avg_scale, exp_avg_sq_scale, numel, options);       \
  }
OPTKERNELS_ENTRY(adam_float32_float32, F32, F32)
OPTKERNELS_ENTRY(adam_float32_bfloat16, F32, BF16)
OPTKERNELS_ENTRY(adam_float32_codes, F32, Codes)
OPTKERNELS_ENTRY(adam_bfloat16_float32, BF16, F32)
OPTKERNELS_ENTRY(adam_bfloat16_bfloat16, BF16, BF16)
OPTKERNELS_ENTRY(adam_bfloat16_codes, BF16, Codes)
