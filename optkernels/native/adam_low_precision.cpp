// The Adam-family step over low-precision state, one pass over memory, for CPU tensors:
// optkernels.adam.adam_low_precision_rule written as one loop, which the C++ compiler
// vectorizes (built and loaded by optkernels/_native.py; no torch headers, plain C ABI).
//
// The numbers are those of the rule in optkernels/adam.py, op for op in float32, with no fused
// multiply-add (built with -ffp-contract=off, as inductor builds the compiled rule); the codes
// those of optkernels.quantization's quantiser (quantize_blockwise, rounding stochastically); the
// random bits those of optkernels.quantization.random_words. The tests check all three against
// the Python functions, and the whole against the rule compiled by torch.compile, bit for bit.
//
// A tensor is read in blocks of 256 elements (the quantiser's blocks): each block's new moments
// stay in a stack buffer until its absmax is known, then are encoded, so the codes are read and
// written once. Blocks are shared among threads.
//
// Over 8-bit state, where the CPU has AVX-512 (F, BW, VL), the block step is written out in
// intrinsics (below), the plain loops' numbers bit for bit; PORTABLE=1 builds the plain loops
// whatever the CPU (the tests compare the two builds).
//
// One build is one variant, chosen by the macros below (optkernels/_native.py passes them as -D
// flags): what is constant through a run is a compile-time choice, so the loop carries no option
// it does not use.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef PARAM_STORAGE
#define PARAM_STORAGE 0  // 0: float32, 1: bfloat16 rounded to nearest, 2: bfloat16 rounded stochastically
#endif
#ifndef STATE_STORAGE
#define STATE_STORAGE 2  // 0: float32, 1: bfloat16 rounded stochastically, 2: 8-bit codes and scales
#endif
#ifndef SECOND_MOMENT
#define SECOND_MOMENT 0  // 0: Adam's (the squared grad), 1: AdaBelief's (the squared deviation, plus eps)
#endif
#ifndef PORTABLE
#define PORTABLE 0  // 1: the plain loops only, whatever the CPU (the tests compare the two)
#endif
#ifndef UPDATE
#define UPDATE 0  // 0: Adam's, 1: NAdam's, 2: momentum only (rectification's early steps), 3: none
#endif

namespace {

constexpr int64_t kBlock = 256;
constexpr float kFp8Max = 448.0f;

struct Options {
  float one_minus_beta1, beta2, one_minus_beta2, eps, step_size, grad_step_size, rsqrt_bias_correction2,
      grad_decay, param_factor;
  int32_t negate, decays_grad, threads;
  uint32_t key_moments, key_param;
};

inline uint32_t bits_of(float x) { uint32_t u; std::memcpy(&u, &x, 4); return u; }
inline float float_of(uint32_t u) { float x; std::memcpy(&x, &u, 4); return x; }

// A select by bits (mask all ones or zero): a select on a loop-invariant bool does not vectorize
// in gcc 12, a bitwise one does; either gives the chosen value exactly.
inline float pick(uint32_t mask, float if_set, float otherwise) {
  return float_of((bits_of(if_set) & mask) | (bits_of(otherwise) & ~mask));
}

// optkernels.quantization.random_words, element `index` of the call with `key`
inline uint32_t random_word(uint32_t index, uint32_t key) {
  uint32_t h = index * 0x7FEB352Du + key;
  h ^= h >> 16;
  h *= 0x5BD1E995u;
  h ^= h >> 15;
  h *= 0x27D4EB2Du;
  return h ^ (h >> 16);
}

inline float bf16_value(uint16_t b) { return float_of(uint32_t(b) << 16); }
inline uint16_t bf16_stochastic(float x, uint32_t random) { return uint16_t((bits_of(x) + random) >> 16); }
inline uint16_t bf16_nearest(float x) {  // torch's float -> bfloat16 cast
  uint32_t u = bits_of(x);
  return x != x ? uint16_t(0x7FC0) : uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// e4m3 code -> value, exact (the two NaN codes are never written), with no float32 subnormal on
// the way (an operation on one costs a microcode assist, some 100 cycles): the code's exponent and
// mantissa bits placed in a float32's, rebiased from 7 to 127; a subnormal code (exponent 0) as
// the normal float32 2**-6 * (1 + m/8), less 2**-6 (exact). (Through float16, whose conversions
// are one instruction, would be fewer instructions, but gcc 12 does not vectorize them.)
inline float e4m3_value(uint8_t code) {
  const uint32_t magnitude = uint32_t(code & 0x7Fu) << 20, subnormal = (code & 0x78u) == 0 ? ~0u : 0u;
  const float biased = float_of(magnitude + (120u << 23) + (subnormal & (1u << 23)));
  const float value = biased - float_of(subnormal & 0x3C800000u);  // 2**-6 where subnormal, else 0
  return float_of(bits_of(value) | (uint32_t(code & 0x80u) << 24));
}

// x (|x| <= 448, up to a rounding) -> e4m3 code, rounded stochastically with `random` (16 bits):
// optkernels.quantization.e4m3_stochastic. Normal values: the random bits added below the float32
// pattern's top 3 mantissa bits, which are then kept; subnormal ones (codes: multiples of 2**-9,
// the spacing of the normal codes in [2**-6, 2**-5)): |x| + 2**-6 rounded so, less 8 (the code of
// 2**-6). A value a rounding over 448 (the block's absmax times the reciprocal of absmax/448)
// keeps the code of 448, as a clamp to 448 would.
inline uint8_t e4m3_stochastic(float x, uint32_t random) {
  const float magnitude = float_of(bits_of(x) & 0x7FFFFFFFu);
  const uint32_t subnormal = magnitude < 0x1p-6f ? ~0u : 0u;
  const float shifted = pick(subnormal, magnitude + 0x1p-6f, magnitude);
  const uint32_t code = ((bits_of(shifted) + (random << 4)) >> 20) - (120u << 3) - (subnormal & 8u);
  return uint8_t(code | ((bits_of(x) >> 24) & 0x80u));
}

#if PARAM_STORAGE == 0
using ParamStorage = float;
inline float load_param(float x) { return x; }
#else
using ParamStorage = uint16_t;
inline float load_param(uint16_t x) { return bf16_value(x); }
#endif
#if STATE_STORAGE == 0
using StateStorage = float;
#elif STATE_STORAGE == 1
using StateStorage = uint16_t;
#else
using StateStorage = uint8_t;
#endif

#if STATE_STORAGE == 2 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !PORTABLE
// The block step of the plain loops further below, written with AVX-512 intrinsics, 16 elements a
// vector, the same numbers bit for bit (the tests build both and compare them). gcc 12 vectorizes
// the plain loops, but cannot see the fp8 codes as float16 bits (one conversion instruction each
// way); written out, the step over 8-bit state takes about 30% less time on a Zen 4 core with the
// data in cache (0.93 against 1.2-1.5 ns per element).
#define VECTOR_BLOCK_STEP 1

// Prefetched this many elements ahead: on two threads the step is compute-bound, yet it stalled
// on loads the hardware prefetcher issued late; prefetching took 5-10% off its time on GPT-2's
// shapes (2 Zen 4 cores; 1 or 4 blocks ahead did no better).
constexpr int64_t kPrefetch = 2 * kBlock;

inline __mmask16 lanes_of(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

inline __m512i random_words16(__m512i index, __m512i key) {  // random_word, lane by lane
  __m512i h = _mm512_add_epi32(_mm512_mullo_epi32(index, _mm512_set1_epi32(0x7FEB352D)), key);
  h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
  h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x5BD1E995));
  h = _mm512_xor_si512(h, _mm512_srli_epi32(h, 15));
  h = _mm512_mullo_epi32(h, _mm512_set1_epi32(0x27D4EB2D));
  return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16));
}

// e4m3_value(code) / 256, exactly: the code's bits placed in a float16's (exponent bias 15, not
// 7, hence the factor; e4m3's subnormals land on float16's), converted in one instruction.
inline __m512 e4m3_value_over_256(const uint8_t* codes, __mmask16 lanes) {
  // sign extended and shifted by 7, the code's sign lands on bits 15 and 14; 14 is cleared
  const __m256i shifted = _mm256_slli_epi16(_mm256_cvtepi8_epi16(_mm_maskz_loadu_epi8(lanes, codes)), 7);
  return _mm512_cvtph_ps(_mm256_and_si256(shifted, _mm256_set1_epi16(int16_t(0xBFFF))));
}

// e4m3_stochastic(x, random), with `random` shifted left by 4 (bits 4 to 19)
inline void store_e4m3_stochastic(uint8_t* codes, __mmask16 lanes, __m512 x, __m512i random_shifted) {
  const __m512i x_bits = _mm512_castps_si512(x);
  const __m512 magnitude = _mm512_castsi512_ps(_mm512_and_si512(x_bits, _mm512_set1_epi32(0x7FFFFFFF)));
  const __mmask16 subnormal = _mm512_cmp_ps_mask(magnitude, _mm512_set1_ps(0x1p-6f), _CMP_LT_OQ);
  const __m512 shifted = _mm512_mask_add_ps(magnitude, subnormal, magnitude, _mm512_set1_ps(0x1p-6f));
  __m512i code = _mm512_add_epi32(_mm512_castps_si512(shifted), random_shifted);
  code = _mm512_sub_epi32(code, _mm512_set1_epi32(120 << 23));
  code = _mm512_srli_epi32(_mm512_mask_sub_epi32(code, subnormal, code, _mm512_set1_epi32(8 << 20)), 20);
  // code | (x's bits >> 24 & 0x80)
  code = _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(x_bits, 24), _mm512_set1_epi32(0x80), 0xF8);
  _mm512_mask_cvtepi32_storeu_epi8(codes, lanes, code);
}

inline __m512 load_params(const ParamStorage* values, __mmask16 lanes) {
#if PARAM_STORAGE == 0
  return _mm512_maskz_loadu_ps(lanes, values);
#else
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, values)), 16));
#endif
}

inline void store_params(ParamStorage* values, __mmask16 lanes, __m512 x, __m512i index, __m512i key) {
#if PARAM_STORAGE == 0
  (void)index, (void)key;
  _mm512_mask_storeu_ps(values, lanes, x);
#elif PARAM_STORAGE == 1
  (void)index, (void)key;  // bf16_nearest
  const __m512i u = _mm512_castps_si512(x);
  __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
  rounded = _mm512_mask_mov_epi32(rounded, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC00000));
  _mm512_mask_cvtepi32_storeu_epi16(values, lanes, _mm512_srli_epi32(rounded, 16));
#else
  const __m512i random = _mm512_and_si512(random_words16(index, key), _mm512_set1_epi32(0xFFFF));
  _mm512_mask_cvtepi32_storeu_epi16(values, lanes, _mm512_srli_epi32(_mm512_add_epi32(_mm512_castps_si512(x), random), 16));
#endif
}

void block_step(ParamStorage* __restrict param, const ParamStorage* __restrict grad,
                StateStorage* __restrict exp_avg, StateStorage* __restrict exp_avg_sq,
                float* __restrict exp_avg_scale, float* __restrict exp_avg_sq_scale, int64_t start, int64_t count,
                const Options& o) {
  const __m512 one_minus_beta1 = _mm512_set1_ps(o.one_minus_beta1), beta2 = _mm512_set1_ps(o.beta2),
               one_minus_beta2 = _mm512_set1_ps(o.one_minus_beta2), eps = _mm512_set1_ps(o.eps),
               step_size = _mm512_set1_ps(o.step_size), grad_step_size = _mm512_set1_ps(o.grad_step_size),
               rsqrt_bias_correction2 = _mm512_set1_ps(o.rsqrt_bias_correction2),
               grad_decay = _mm512_set1_ps(o.grad_decay), param_factor = _mm512_set1_ps(o.param_factor);
  (void)grad_step_size, (void)rsqrt_bias_correction2, (void)step_size;
  const __m512i sign_flip = _mm512_set1_epi32(o.negate ? int32_t(0x80000000u) : 0), magnitude = _mm512_set1_epi32(0x7FFFFFFF);
  const __m512i key_moments = _mm512_set1_epi32(int32_t(o.key_moments)), key_param = _mm512_set1_epi32(int32_t(o.key_param));
  const __m512i lane_index = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const bool decays_grad = o.decays_grad;
  alignas(64) float new_exp_avg[kBlock], new_root[kBlock];
  // times 256: e4m3_value_over_256(code) * (256 * scale) rounds the product e4m3_value(code) * scale
  // once, as the rule does (256 * scale is exact: scale <= FLT_MAX / 448)
  const __m512 exp_avg_scale_old = _mm512_set1_ps(exp_avg_scale[start / kBlock] * 256.0f);
  const __m512 exp_avg_sq_scale_old = _mm512_set1_ps(exp_avg_sq_scale[start / kBlock] * 256.0f);
  __m512i exp_avg_absmax = _mm512_setzero_si512(), root_absmax = _mm512_setzero_si512();
  for (int64_t j = 0; j < count; j += 16) {
    const int64_t i = start + j;
    const __mmask16 lanes = lanes_of(count - j);
    // two blocks ahead (past a tensor's end too: a prefetch never faults); the codes a cache
    // line (64 of them) at a time
    _mm_prefetch(reinterpret_cast<const char*>(grad + i + kPrefetch), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(param + i + kPrefetch), _MM_HINT_T0);
    if (j % 64 == 0) {
      _mm_prefetch(reinterpret_cast<const char*>(exp_avg + i + kPrefetch), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(exp_avg_sq + i + kPrefetch), _MM_HINT_T0);
    }
    __m512 g = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(load_params(grad + i, lanes)), sign_flip));
    __m512 p = load_params(param + i, lanes);
    if (decays_grad) g = _mm512_add_ps(g, _mm512_mul_ps(p, grad_decay));
    p = _mm512_mul_ps(p, param_factor);
    __m512 m = _mm512_mul_ps(e4m3_value_over_256(exp_avg + i, lanes), exp_avg_scale_old);
    const __m512 old_root = _mm512_mul_ps(e4m3_value_over_256(exp_avg_sq + i, lanes), exp_avg_sq_scale_old);
    __m512 v = _mm512_mul_ps(old_root, old_root);
    m = _mm512_add_ps(m, _mm512_mul_ps(_mm512_sub_ps(g, m), one_minus_beta1));
#if SECOND_MOMENT == 1
    const __m512 deviation = _mm512_sub_ps(g, m);
    v = _mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(v, beta2), _mm512_mul_ps(deviation, _mm512_mul_ps(deviation, one_minus_beta2))), eps);
#else
    v = _mm512_add_ps(_mm512_mul_ps(v, beta2), _mm512_mul_ps(g, _mm512_mul_ps(g, one_minus_beta2)));
#endif
    const __m512 root = _mm512_sqrt_ps(v);
#if UPDATE == 0
    p = _mm512_sub_ps(p, _mm512_mul_ps(_mm512_div_ps(m, _mm512_add_ps(_mm512_mul_ps(root, rsqrt_bias_correction2), eps)), step_size));
#elif UPDATE == 1
    p = _mm512_sub_ps(p, _mm512_div_ps(_mm512_add_ps(_mm512_mul_ps(g, grad_step_size), _mm512_mul_ps(m, step_size)),
                                       _mm512_add_ps(_mm512_mul_ps(root, rsqrt_bias_correction2), eps)));
#elif UPDATE == 2
    p = _mm512_sub_ps(p, _mm512_mul_ps(m, step_size));
#endif
    store_params(param + i, lanes, p, _mm512_add_epi32(_mm512_set1_epi32(int32_t(i)), lane_index), key_param);
    _mm512_store_ps(new_exp_avg + j, m);
    _mm512_store_ps(new_root + j, root);
    // as the plain loop: an integer max of |x|'s bits
    exp_avg_absmax = _mm512_mask_max_epu32(exp_avg_absmax, lanes, exp_avg_absmax, _mm512_and_si512(_mm512_castps_si512(m), magnitude));
    root_absmax = _mm512_mask_max_epu32(root_absmax, lanes, root_absmax, _mm512_and_si512(_mm512_castps_si512(root), magnitude));
  }
  const float exp_avg_max = float_of(_mm512_reduce_max_epu32(exp_avg_absmax)), root_max = float_of(_mm512_reduce_max_epu32(root_absmax));
  const float exp_avg_new_scale = exp_avg_max / kFp8Max, root_new_scale = root_max / kFp8Max;
  const __m512 exp_avg_inverse = _mm512_set1_ps(1.0f / (exp_avg_max > 0.0f ? exp_avg_new_scale : 1.0f));
  const __m512 root_inverse = _mm512_set1_ps(1.0f / (root_max > 0.0f ? root_new_scale : 1.0f));
  for (int64_t j = 0; j < count; j += 16) {
    const int64_t i = start + j;
    const __mmask16 lanes = lanes_of(count - j);
    const __m512i word = random_words16(_mm512_add_epi32(_mm512_set1_epi32(int32_t(i)), lane_index), key_moments);
    const __m512i low = _mm512_and_si512(_mm512_slli_epi32(word, 4), _mm512_set1_epi32(0xFFFF0));
    const __m512i high = _mm512_and_si512(_mm512_srli_epi32(word, 12), _mm512_set1_epi32(0xFFFF0));
    store_e4m3_stochastic(exp_avg + i, lanes, _mm512_mul_ps(_mm512_load_ps(new_exp_avg + j), exp_avg_inverse), low);
    store_e4m3_stochastic(exp_avg_sq + i, lanes, _mm512_mul_ps(_mm512_load_ps(new_root + j), root_inverse), high);
  }
  exp_avg_scale[start / kBlock] = exp_avg_new_scale;
  exp_avg_sq_scale[start / kBlock] = root_new_scale;
}
#else
// Distinct tensors (the caller checks), hence __restrict: stores to one cannot change the others.
void block_step(ParamStorage* __restrict param, const ParamStorage* __restrict grad,
                StateStorage* __restrict exp_avg, StateStorage* __restrict exp_avg_sq,
                float* __restrict exp_avg_scale, float* __restrict exp_avg_sq_scale, int64_t start, int64_t count,
                const Options& o) {
  // the options as locals: the compiler cannot prove that the stores below leave `o` alone
  const float one_minus_beta1 = o.one_minus_beta1, beta2 = o.beta2, one_minus_beta2 = o.one_minus_beta2,
              eps = o.eps, step_size = o.step_size, grad_step_size = o.grad_step_size,
              rsqrt_bias_correction2 = o.rsqrt_bias_correction2, grad_decay = o.grad_decay,
              param_factor = o.param_factor;
  const uint32_t sign_flip = o.negate ? 0x80000000u : 0u, decays_grad = o.decays_grad ? 0xFFFFFFFFu : 0u;
  const uint32_t key_moments = o.key_moments, key_param = o.key_param;
  (void)grad_step_size, (void)rsqrt_bias_correction2, (void)key_moments, (void)key_param;
  float new_exp_avg[kBlock], new_root[kBlock];  // m_t and sqrt(v_t), quantised once the block is done
  float exp_avg_scale_old = 0.0f, exp_avg_sq_scale_old = 0.0f;
#if STATE_STORAGE == 2
  exp_avg_scale_old = exp_avg_scale[start / kBlock];
  exp_avg_sq_scale_old = exp_avg_sq_scale[start / kBlock];
#endif
  uint32_t exp_avg_absmax_bits = 0, root_absmax_bits = 0;
  for (int64_t j = 0; j < count; ++j) {
    const int64_t i = start + j;
    float g = float_of(bits_of(load_param(grad[i])) ^ sign_flip);  // -g where maximize
    float p = load_param(param[i]);
    g = pick(decays_grad, g + p * grad_decay, g);
    p = p * param_factor;  // 1 without decoupled decay: exact
    float m, v;
#if STATE_STORAGE == 2
    m = e4m3_value(exp_avg[i]) * exp_avg_scale_old;
    float old_root = e4m3_value(exp_avg_sq[i]) * exp_avg_sq_scale_old;
    v = old_root * old_root;
#elif STATE_STORAGE == 1
    m = bf16_value(exp_avg[i]);
    v = bf16_value(exp_avg_sq[i]);
#else
    m = exp_avg[i];
    v = exp_avg_sq[i];
#endif
    m = m + (g - m) * one_minus_beta1;
#if SECOND_MOMENT == 1
    float deviation = g - m;
    v = v * beta2 + deviation * (deviation * one_minus_beta2) + eps;
#else
    v = v * beta2 + g * (g * one_minus_beta2);
#endif
    float root = __builtin_sqrtf(v);
#if UPDATE == 0
    p = p - m / (root * rsqrt_bias_correction2 + eps) * step_size;
#elif UPDATE == 1
    p = p - (g * grad_step_size + m * step_size) / (root * rsqrt_bias_correction2 + eps);
#elif UPDATE == 2
    p = p - m * step_size;
#endif
#if PARAM_STORAGE == 0
    param[i] = p;
#elif PARAM_STORAGE == 1
    param[i] = bf16_nearest(p);
#else
    param[i] = bf16_stochastic(p, random_word(uint32_t(i), key_param) & 0xFFFFu);
#endif
#if STATE_STORAGE == 2
    new_exp_avg[j] = m;
    new_root[j] = root;
    // |x|'s bits order as |x| does, NaN above all: an integer max is torch's amax, NaN included
    uint32_t exp_avg_magnitude = bits_of(m) & 0x7FFFFFFFu, root_magnitude = bits_of(root) & 0x7FFFFFFFu;
    exp_avg_absmax_bits = exp_avg_magnitude > exp_avg_absmax_bits ? exp_avg_magnitude : exp_avg_absmax_bits;
    root_absmax_bits = root_magnitude > root_absmax_bits ? root_magnitude : root_absmax_bits;
#elif STATE_STORAGE == 1
    const uint32_t word = random_word(uint32_t(i), key_moments);  // low half: m_t's, high half: v_t's
    exp_avg[i] = bf16_stochastic(m, word & 0xFFFFu);
    exp_avg_sq[i] = bf16_stochastic(v, word >> 16);
#else
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
#endif
  }
#if STATE_STORAGE == 2
  const float exp_avg_absmax = float_of(exp_avg_absmax_bits), root_absmax = float_of(root_absmax_bits);
  const float exp_avg_new_scale = exp_avg_absmax / kFp8Max, root_new_scale = root_absmax / kFp8Max;
  // a block of zeros divides by 1 (its codes are 0 whatever the divisor), keeping scale 0
  const float exp_avg_inverse = 1.0f / (exp_avg_absmax > 0.0f ? exp_avg_new_scale : 1.0f);
  const float root_inverse = 1.0f / (root_absmax > 0.0f ? root_new_scale : 1.0f);
  uint8_t* __restrict exp_avg_codes = exp_avg + start;
  uint8_t* __restrict exp_avg_sq_codes = exp_avg_sq + start;
  for (int64_t j = 0; j < count; ++j) {
    const uint32_t word = random_word(uint32_t(start + j), key_moments);  // low half: m_t's, high half: v_t's
    exp_avg_codes[j] = e4m3_stochastic(new_exp_avg[j] * exp_avg_inverse, word & 0xFFFFu);
    exp_avg_sq_codes[j] = e4m3_stochastic(new_root[j] * root_inverse, word >> 16);
  }
  exp_avg_scale[start / kBlock] = exp_avg_new_scale;
  exp_avg_sq_scale[start / kBlock] = root_new_scale;
#endif
}
#endif

}  // namespace

// One step of `count` tensors (parallel arrays of pointers, as the kernels' lists): their blocks
// are numbered one after another and shared among threads, so that many small tensors keep every
// thread busy and cost one call. Element indices (for the random words) are per tensor.
extern "C" void adam_step(void* const* params, const void* const* grads, void* const* exp_avgs,
                          void* const* exp_avg_sqs, float* const* exp_avg_scales, float* const* exp_avg_sq_scales,
                          const int64_t* numels, int64_t count, const Options* options) {
  const Options o = *options;
  std::vector<int64_t> first_block(count + 1, 0);  // tensor t's blocks: [first_block[t], first_block[t + 1])
  for (int64_t t = 0; t < count; ++t) first_block[t + 1] = first_block[t] + (numels[t] + kBlock - 1) / kBlock;
  const int64_t blocks = first_block[count];
#pragma omp parallel for num_threads(o.threads) schedule(static) if (o.threads > 1)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t t = std::upper_bound(first_block.begin(), first_block.end(), b) - first_block.begin() - 1;
    const int64_t start = (b - first_block[t]) * kBlock;
    block_step(static_cast<ParamStorage*>(params[t]), static_cast<const ParamStorage*>(grads[t]),
               static_cast<StateStorage*>(exp_avgs[t]), static_cast<StateStorage*>(exp_avg_sqs[t]),
               exp_avg_scales[t], exp_avg_sq_scales[t], start,
               numels[t] - start < kBlock ? numels[t] - start : kBlock, o);
  }
}

// 1 where this build steps 8-bit state with the AVX-512 block step, else 0 (for the tests).
extern "C" int vectorized() {
#ifdef VECTOR_BLOCK_STEP
  return 1;
#else
  return 0;
#endif
}
