// Half and bfloat16 conversions. Bit-exact with ggml's scalar paths (round to nearest even).
#include <cstring>

#include "blocks.h"

namespace sealgguf {

static inline uint32_t bits_of(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
static inline float float_of(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

float fp16_to_fp32(fp16_t h) {
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) return float_of(sign | 0x7f800000u | (mant << 13));  // inf / nan
    if (exp == 0) {
        if (mant == 0) return float_of(sign);
        // subnormal: normalise
        int e = -1;
        do { mant <<= 1; ++e; } while ((mant & 0x400) == 0);
        mant &= 0x3ff;
        return float_of(sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13));
    }
    return float_of(sign | ((exp + 127 - 15) << 23) | (mant << 13));
}

fp16_t fp32_to_fp16(float f) {
    const uint32_t u = bits_of(f);
    const uint32_t sign = (u >> 16) & 0x8000;
    const uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (fp16_t)(sign | 0x7e00);       // nan
    if (abs >= 0x477ff000u) return (fp16_t)(sign | 0x7c00);      // rounds to inf
    if (abs < 0x38800000u) {                                      // subnormal half (or zero)
        // value * 2^24 rounded to nearest even gives the subnormal mantissa
        const int shift = 126 - (int)(abs >> 23);                 // 14..
        if (shift > 24) return (fp16_t)sign;
        const uint32_t mant = (abs & 0x7fffff) | 0x800000;
        const uint32_t q = mant >> shift;
        const uint32_t rem = mant & ((1u << shift) - 1);
        const uint32_t half = 1u << (shift - 1);
        uint32_t r = q + ((rem > half || (rem == half && (q & 1))) ? 1 : 0);
        return (fp16_t)(sign | r);
    }
    // normal: rebias exponent and round the 13 dropped mantissa bits to nearest even
    uint32_t v = abs - ((127 - 15) << 23);
    v = v + 0xfff + ((v >> 13) & 1);
    return (fp16_t)(sign | (v >> 13));
}

float bf16_to_fp32(bf16_t h) { return float_of((uint32_t)h << 16); }

bf16_t fp32_to_bf16(float f) {
    const uint32_t u = bits_of(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 64);  // quiet nan
    return (bf16_t)((u + (0x7fff + ((u >> 16) & 1))) >> 16);
}

}  // namespace sealgguf
