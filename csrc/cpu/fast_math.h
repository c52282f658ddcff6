// Vectorisable float helpers shared by the CPU decoding kernels (sample_tokens, beam_search_step).
#pragma once
#include <bit>
#include <cstdint>
#include <limits>

namespace blipx::cpu {

inline constexpr float kInf = std::numeric_limits<float>::infinity();

// exp(x) for x <= 0 (x = -inf gives 0), written so that loops calling it vectorise (libm's expf
// does not): Cephes' expf polynomial on x = n ln2 + r, |r| <= ln2 / 2, scaled by 2^n through the
// exponent bits; within 1 ulp of expf on [-87, 0]. Below -87 (exp < 1.7e-38, near the smallest
// normal float) the result is 0, which changes no decision: such weights are < 2^-125 of the
// row max. Range test and clamp are integer arithmetic on the bits: GCC does not if-convert the
// float compares and selects of a plain version under the default -ftrapping-math.
inline float exp_nonpos(float x) {
  // Branch-free range handling on the magnitude bits (d < 0: |x| > 87, or NaN).
  const int32_t mag = static_cast<int32_t>(std::bit_cast<uint32_t>(x) & 0x7FFFFFFFu);
  const int32_t d = 0x42AE0000 - mag;  // bits of 87.0f
  const int32_t over = d >> 31;        // all ones when |x| > 87
  const uint32_t keep = ~static_cast<uint32_t>(over);
  x = std::bit_cast<float>(static_cast<uint32_t>(mag + (d & over)) | 0x80000000u);  // -min(|x|, 87)
  const float t = x * 1.44269504088896341f + 12582912.0f;  // 1.5 * 2^23: round to nearest
  const float n = t - 12582912.0f;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t ni = std::bit_cast<int32_t>(t) - 0x4B400000;  // n as an integer, in [-126, 0]
  const uint32_t scale = static_cast<uint32_t>(ni + 127) << 23;
  return std::bit_cast<float>(std::bit_cast<uint32_t>(p * std::bit_cast<float>(scale)) & keep);
}

// Order-fixed sum with eight double accumulators: vectorises, and the result does not depend on
// the thread count.
inline double sum8(const float* a, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8)
    for (int u = 0; u < 8; ++u) acc[u] += a[j + u];
  double s = 0.0;
  for (; j < n; ++j) s += a[j];
  for (int u = 0; u < 8; ++u) s += acc[u];
  return s;
}

}  // namespace blipx::cpu
