// Reference (scalar) dequantization and quantization, one function per block type.
// Written from ggml's published formats: dequantization is bit-identical to ggml's, and the
// quantizers follow ggml's reference algorithms (quantize_row_*_ref), so the error is the same.
#include "quants.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>

namespace sealgguf {

namespace {

constexpr float kGroupMaxEps = 1e-15f;

inline float h2f(fp16_t h) { return fp16_to_fp32(h); }
inline fp16_t f2h(float f) { return fp32_to_fp16(f); }
// ggml's nearest_int: round to nearest, ties to even, by adding 1.5 * 2^23 (exact for |x| <= 4194303, which ggml
// asserts; every argument here is a level or a 6-bit scale). No library call, so loops over it vectorize.
inline int nearest_int(float x) {
    const float v = x + 12582912.f;
    int32_t i;
    std::memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

// ---------------------------------------------------------------- float types (block of 1)

void dequantize_f32(const void* src, float* y, int64_t n) { std::memcpy(y, src, n * sizeof(float)); }
void quantize_f32(const float* x, void* dst, int64_t n) { std::memcpy(dst, x, n * sizeof(float)); }
bool scale_f32(void* b, float s) {
    float* v = (float*)b;
    *v *= s;
    return std::isfinite(*v);
}

void dequantize_f16(const void* src, float* y, int64_t n) {
    const fp16_t* x = (const fp16_t*)src;
    for (int64_t i = 0; i < n; ++i) y[i] = h2f(x[i]);
}
void quantize_f16(const float* x, void* dst, int64_t n) {
    fp16_t* y = (fp16_t*)dst;
    for (int64_t i = 0; i < n; ++i) y[i] = f2h(x[i]);
}
bool scale_f16(void* b, float s) {
    fp16_t* v = (fp16_t*)b;
    const float r = h2f(*v) * s;
    *v = f2h(r);
    return std::isfinite(h2f(*v)) || !std::isfinite(r);
}

void dequantize_bf16(const void* src, float* y, int64_t n) {
    const bf16_t* x = (const bf16_t*)src;
    for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_fp32(x[i]);
}
void quantize_bf16(const float* x, void* dst, int64_t n) {
    bf16_t* y = (bf16_t*)dst;
    for (int64_t i = 0; i < n; ++i) y[i] = fp32_to_bf16(x[i]);
}
bool scale_bf16(void* b, float s) {
    bf16_t* v = (bf16_t*)b;
    *v = fp32_to_bf16(bf16_to_fp32(*v) * s);
    return std::isfinite(bf16_to_fp32(*v));
}

// Rescale one fp16 field; false if the result is not finite.
inline bool scale_field(fp16_t& h, float s) {
    h = f2h(h2f(h) * s);
    return std::isfinite(h2f(h));
}

// ---------------------------------------------------------------- codes: the integers a block stores

// Each block type's code layout, one function each: `c` holds a block's codes in value order, as the
// dequantization reads them (Q4_0: 0..15, the value being (c - 8) * d; Q8_0: -128..127).
// 32 codes of 4 bits: value j in the low nibble of byte j, value j + 16 in the high nibble (Q4_0, Q4_1).
template <typename Block, typename Code>
void pack_nibbles(Block& b, const Code* c) {
#pragma omp simd  // the codes never alias the block: lets the compiler vectorize
    for (int j = 0; j < 16; ++j) b.qs[j] = (uint8_t)(c[j] | (c[j + 16] << 4));
}
// 32 codes of 5 bits: the low 4 as above, the 5th bit of value j in bit j of qh (Q5_0, Q5_1).
template <typename Block, typename Code>
void pack_5bit(Block& b, const Code* c) {
    uint32_t qh = 0;
#pragma omp simd reduction(| : qh)
    for (int j = 0; j < 16; ++j) {
        b.qs[j] = (uint8_t)((c[j] & 0x0F) | ((c[j + 16] & 0x0F) << 4));
        qh |= (uint32_t)((c[j] >> 4) & 1) << j;
        qh |= (uint32_t)((c[j + 16] >> 4) & 1) << (j + 16);
    }
    std::memcpy(b.qh, &qh, 4);
}

// ---------------------------------------------------------------- Q4_0

void dequantize_q4_0(const void* src, float* y, int64_t n) {
    const block_q4_0* x = (const block_q4_0*)src;
    for (int64_t i = 0; i < n / QK4_0; ++i, y += QK4_0) {
        const float d = h2f(x[i].d);
#pragma omp simd  // y never aliases the block: lets the compiler vectorize
        for (int j = 0; j < QK4_0 / 2; ++j) {
            y[j] = ((x[i].qs[j] & 0x0F) - 8) * d;
            y[j + QK4_0 / 2] = ((x[i].qs[j] >> 4) - 8) * d;
        }
    }
}

void quantize_q4_0(const float* x, void* dst, int64_t n) {
    block_q4_0* y = (block_q4_0*)dst;
    for (int64_t i = 0; i < n / QK4_0; ++i, x += QK4_0) {
        float amax = 0.0f, max = 0.0f;  // the value of largest magnitude, with its sign
        for (int j = 0; j < QK4_0; ++j) {
            if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
        }
        const float d = max / -8;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        uint8_t L[QK4_0];
        for (int j = 0; j < QK4_0; ++j) L[j] = (uint8_t)std::min(15, (int)(int8_t)(x[j] * id + 8.5f));
        pack_nibbles(y[i], L);
    }
}

bool scale_q4_0(void* b, float s) { return scale_field(((block_q4_0*)b)->d, s); }
void pack_codes_q4_0(void* b, const int32_t* c) { pack_nibbles(*(block_q4_0*)b, c); }
void set_scales_q4_0(void* b, float d, float, const int*, const int*) { ((block_q4_0*)b)->d = f2h(d); }

// ---------------------------------------------------------------- Q4_1

void dequantize_q4_1(const void* src, float* y, int64_t n) {
    const block_q4_1* x = (const block_q4_1*)src;
    for (int64_t i = 0; i < n / QK4_1; ++i, y += QK4_1) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
#pragma omp simd
        for (int j = 0; j < QK4_1 / 2; ++j) {
            y[j] = (x[i].qs[j] & 0x0F) * d + m;
            y[j + QK4_1 / 2] = (x[i].qs[j] >> 4) * d + m;
        }
    }
}

void quantize_q4_1(const float* x, void* dst, int64_t n) {
    block_q4_1* y = (block_q4_1*)dst;
    for (int64_t i = 0; i < n / QK4_1; ++i, x += QK4_1) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK4_1; ++j) { min = std::min(min, x[j]); max = std::max(max, x[j]); }
        const float d = (max - min) / 15;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        y[i].m = f2h(min);
        uint8_t L[QK4_1];
        for (int j = 0; j < QK4_1; ++j) L[j] = (uint8_t)std::min(15, (int)(int8_t)((x[j] - min) * id + 0.5f));
        pack_nibbles(y[i], L);
    }
}

void pack_codes_q4_1(void* b, const int32_t* c) { pack_nibbles(*(block_q4_1*)b, c); }
bool scale_q4_1(void* b, float s) {
    block_q4_1* blk = (block_q4_1*)b;
    return scale_field(blk->d, s) & scale_field(blk->m, s);
}
void set_scales_q4_1(void* b, float d, float dmin, const int*, const int*) {
    ((block_q4_1*)b)->d = f2h(d);
    ((block_q4_1*)b)->m = f2h(-dmin);
}

// ---------------------------------------------------------------- Q5_0 / Q5_1 (5th bit in qh)

inline int q5_high_bit(uint32_t qh, int j) { return ((qh >> j) & 1) << 4; }

void dequantize_q5_0(const void* src, float* y, int64_t n) {
    const block_q5_0* x = (const block_q5_0*)src;
    for (int64_t i = 0; i < n / QK5_0; ++i, y += QK5_0) {
        const float d = h2f(x[i].d);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, 4);
#pragma omp simd
        for (int j = 0; j < QK5_0 / 2; ++j) {
            y[j] = (((x[i].qs[j] & 0x0F) | q5_high_bit(qh, j)) - 16) * d;
            y[j + QK5_0 / 2] = (((x[i].qs[j] >> 4) | q5_high_bit(qh, j + QK5_0 / 2)) - 16) * d;
        }
    }
}

void quantize_q5_0(const float* x, void* dst, int64_t n) {
    block_q5_0* y = (block_q5_0*)dst;
    for (int64_t i = 0; i < n / QK5_0; ++i, x += QK5_0) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK5_0; ++j) {
            if (amax < std::fabs(x[j])) { amax = std::fabs(x[j]); max = x[j]; }
        }
        const float d = max / -16;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        uint8_t L[QK5_0];
        for (int j = 0; j < QK5_0; ++j) L[j] = (uint8_t)std::min(31, (int)(int8_t)(x[j] * id + 16.5f));
        pack_5bit(y[i], L);
    }
}

bool scale_q5_0(void* b, float s) { return scale_field(((block_q5_0*)b)->d, s); }
void pack_codes_q5_0(void* b, const int32_t* c) { pack_5bit(*(block_q5_0*)b, c); }
void set_scales_q5_0(void* b, float d, float, const int*, const int*) { ((block_q5_0*)b)->d = f2h(d); }

void dequantize_q5_1(const void* src, float* y, int64_t n) {
    const block_q5_1* x = (const block_q5_1*)src;
    for (int64_t i = 0; i < n / QK5_1; ++i, y += QK5_1) {
        const float d = h2f(x[i].d), m = h2f(x[i].m);
        uint32_t qh;
        std::memcpy(&qh, x[i].qh, 4);
#pragma omp simd
        for (int j = 0; j < QK5_1 / 2; ++j) {
            y[j] = ((x[i].qs[j] & 0x0F) | q5_high_bit(qh, j)) * d + m;
            y[j + QK5_1 / 2] = ((x[i].qs[j] >> 4) | q5_high_bit(qh, j + QK5_1 / 2)) * d + m;
        }
    }
}

void quantize_q5_1(const float* x, void* dst, int64_t n) {
    block_q5_1* y = (block_q5_1*)dst;
    for (int64_t i = 0; i < n / QK5_1; ++i, x += QK5_1) {
        float min = FLT_MAX, max = -FLT_MAX;
        for (int j = 0; j < QK5_1; ++j) { min = std::min(min, x[j]); max = std::max(max, x[j]); }
        const float d = (max - min) / 31;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        y[i].m = f2h(min);
        uint8_t L[QK5_1];
        for (int j = 0; j < QK5_1; ++j) L[j] = (uint8_t)((x[j] - min) * id + 0.5f);
        pack_5bit(y[i], L);
    }
}

void pack_codes_q5_1(void* b, const int32_t* c) { pack_5bit(*(block_q5_1*)b, c); }
bool scale_q5_1(void* b, float s) {
    block_q5_1* blk = (block_q5_1*)b;
    return scale_field(blk->d, s) & scale_field(blk->m, s);
}
void set_scales_q5_1(void* b, float d, float dmin, const int*, const int*) {
    ((block_q5_1*)b)->d = f2h(d);
    ((block_q5_1*)b)->m = f2h(-dmin);
}

// ---------------------------------------------------------------- Q8_0

void dequantize_q8_0(const void* src, float* y, int64_t n) {
    const block_q8_0* x = (const block_q8_0*)src;
    for (int64_t i = 0; i < n / QK8_0; ++i, y += QK8_0) {
        const float d = h2f(x[i].d);
#pragma omp simd
        for (int j = 0; j < QK8_0; ++j) y[j] = x[i].qs[j] * d;
    }
}

void quantize_q8_0(const float* x, void* dst, int64_t n) {
    block_q8_0* y = (block_q8_0*)dst;
    for (int64_t i = 0; i < n / QK8_0; ++i, x += QK8_0) {
        float amax = 0.0f;
        for (int j = 0; j < QK8_0; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127;
        const float id = d ? 1.0f / d : 0.0f;
        y[i].d = f2h(d);
        for (int j = 0; j < QK8_0; ++j) y[i].qs[j] = (int8_t)std::round(x[j] * id);
    }
}

bool scale_q8_0(void* b, float s) { return scale_field(((block_q8_0*)b)->d, s); }
void pack_codes_q8_0(void* b, const int32_t* c) {
    for (int j = 0; j < QK8_0; ++j) ((block_q8_0*)b)->qs[j] = (int8_t)c[j];
}
void set_scales_q8_0(void* b, float d, float, const int*, const int*) { ((block_q8_0*)b)->d = f2h(d); }

// ---------------------------------------------------------------- K-quant helpers

// The K-quant searches below fit the N sub-blocks of a super-block at once: sub-block k runs in lane k of every
// loop over k, through exactly the scalar operations of ggml's search in their order (branches become selects), so
// the results are ggml's bit for bit while the compiler runs the lanes in vectors. Buffers hold value i of every
// lane together: xt[i][k].
constexpr int kMaxSubLen = 32;  // values per sub-block, at most

// std::max(lo, std::min(hi, nearest_int(v))), in selects (std::min/max take references, which keep the
// vectorizer off these loops)
inline int level(float v, int lo, int hi) {
    const int l = nearest_int(v);
    return l < lo ? lo : l > hi ? hi : l;
}

// x [N][n] into xt[i][k]
template <int N>
void to_lanes(int n, const float* x, float (*xt)[N]) {
    for (int k = 0; k < N; ++k)
        for (int i = 0; i < n; ++i) xt[i][k] = x[k * n + i];
}

// Per lane, the value of largest magnitude (the first such, as ggml's `if (ax > amax)` scan) and that magnitude.
template <int N>
void lanes_max(int n, const float (*xt)[N], float* max, float* amax) {
    for (int k = 0; k < N; ++k) max[k] = amax[k] = 0;
    for (int i = 0; i < n; ++i)
#pragma omp simd
        for (int k = 0; k < N; ++k) {
            const bool above = std::fabs(xt[i][k]) > amax[k];
            amax[k] = above ? std::fabs(xt[i][k]) : amax[k];
            max[k] = above ? xt[i][k] : max[k];
        }
}

// Per lane, the levels of every value at one trial scale, l = nearest_int(iscale x) in -nmax..nmax-1 (stored plus
// `offset`), and the sums with weights x^2 that make_qx_quants and make_q3_quants judge a trial by: sum w x l and
// sum w l^2.
template <int N>
void symmetric_trial(int n, int nmax, const float (*xt)[N], const float* iscale, int offset, int32_t (*levels)[N],
                     float* sumlx, float* suml2) {
    for (int k = 0; k < N; ++k) sumlx[k] = suml2[k] = 0;
    for (int i = 0; i < n; ++i)
#pragma omp simd
        for (int k = 0; k < N; ++k) {
            const int l = level(iscale[k] * xt[i][k], -nmax, nmax - 1);
            levels[i][k] = l + offset;
            const float w = xt[i][k] * xt[i][k];
            sumlx[k] += w * xt[i][k] * l;
            suml2[k] += w * l * l;
        }
}

// Symmetric fits of N sub-blocks of n values (x [N][n]) to levels -nmax..nmax-1, weighted least squares over 19
// trial scales: ggml's make_qx_quants (rmse_type 1, no weights given). Writes each sub-block's scale, and its
// levels offset by nmax to L [N][n].
template <int N>
void fit_symmetric(int n, int nmax, const float* x, int8_t* L, float* scale_out) {
    float xt[kMaxSubLen][N];
    int32_t lv[kMaxSubLen][N], aux[kMaxSubLen][N];
    to_lanes<N>(n, x, xt);
    float max[N], amax[N], sumlx[N], suml2[N], scale[N], best[N];
    lanes_max<N>(n, xt, max, amax);
    float iscale0[N];
    for (int k = 0; k < N; ++k) iscale0[k] = -nmax / max[k];  // inf in a lane whose max is 0: replaced below
    symmetric_trial<N>(n, nmax, xt, iscale0, nmax, lv, sumlx, suml2);
    for (int k = 0; k < N; ++k) {
        scale[k] = suml2[k] ? sumlx[k] / suml2[k] : 0.0f;
        best[k] = scale[k] * sumlx[k];
    }
    for (int is = -9; is <= 9; ++is) {
        if (is == 0) continue;
        float iscale[N];
        bool take[N];
        for (int k = 0; k < N; ++k) iscale[k] = -(nmax + 0.1f * is) / max[k];
        symmetric_trial<N>(n, nmax, xt, iscale, nmax, aux, sumlx, suml2);
        for (int k = 0; k < N; ++k) {
            take[k] = suml2[k] > 0 && sumlx[k] * sumlx[k] > best[k] * suml2[k];
            scale[k] = take[k] ? sumlx[k] / suml2[k] : scale[k];
            best[k] = take[k] ? scale[k] * sumlx[k] : best[k];
        }
        for (int i = 0; i < n; ++i)
#pragma omp simd
            for (int k = 0; k < N; ++k) lv[i][k] = take[k] ? aux[i][k] : lv[i][k];
    }
    for (int k = 0; k < N; ++k) {
        const bool small = amax[k] < kGroupMaxEps;
        scale_out[k] = small ? 0.f : scale[k];
        for (int i = 0; i < n; ++i) L[k * n + i] = small ? 0 : (int8_t)lv[i][k];
    }
}

// Q3_K's sub-block fits, N sub-blocks of n values (x [N][n]): start from the max, then move single levels while
// the weighted error falls (at most 5 sweeps): ggml's make_q3_quants with rmse on. A sweep that changes nothing in
// a lane leaves it as it found it, so the next changes nothing either: running sweeps until no lane changes is
// ggml's early stop in each. Writes each sub-block's scale, and its levels offset by nmax to L [N][n].
template <int N>
void fit_q3(int n, int nmax, const float* x, int8_t* L, float* scale_out) {
    float xt[kMaxSubLen][N];
    int32_t lv[kMaxSubLen][N];
    to_lanes<N>(n, x, xt);
    float max[N], amax[N], iscale[N], sumlx[N], suml2[N];
    lanes_max<N>(n, xt, max, amax);
    for (int k = 0; k < N; ++k) iscale[k] = -nmax / max[k];  // inf in a lane whose max is 0: replaced below
    symmetric_trial<N>(n, nmax, xt, iscale, 0, lv, sumlx, suml2);
    for (int itry = 0; itry < 5; ++itry) {
        int changed = 0;
        for (int i = 0; i < n; ++i)
#pragma omp simd reduction(+ : changed)
            for (int k = 0; k < N; ++k) {
                const float w = xt[i][k] * xt[i][k];
                const int old = lv[i][k];
                float slx = sumlx[k] - w * xt[i][k] * old;
                float sl2 = suml2[k] - w * old * old;
                const int new_l = level(xt[i][k] * sl2 / slx, -nmax, nmax - 1);  // used only where slx > 0
                const bool tried = (slx > 0) & (new_l != old);  // & rather than &&: no branch in the lanes
                slx += w * xt[i][k] * new_l;
                sl2 += w * new_l * new_l;
                const bool take = tried & (sl2 > 0) & (slx * slx * suml2[k] > sumlx[k] * sumlx[k] * sl2);
                lv[i][k] = take ? new_l : old;
                sumlx[k] = take ? slx : sumlx[k];
                suml2[k] = take ? sl2 : suml2[k];
                changed += take;
            }
        if (!changed) break;
    }
    for (int k = 0; k < N; ++k) {
        const bool small = amax[k] < kGroupMaxEps;
        scale_out[k] = small ? 0.f : suml2[k] > 0.0f ? sumlx[k] / suml2[k] : 0.0f;
        for (int i = 0; i < n; ++i) L[k * n + i] = small ? 0 : (int8_t)(lv[i][k] + nmax);
    }
}

// Asymmetric fits x ~ scale * L - min with L in 0..nmax for N sub-blocks of n values (x, w and L are [N][n]), each
// searching nstep+1 trial scales and solving weighted least squares for (scale, min) at each: ggml's
// make_qkx2_quants. Writes each sub-block's levels, scale and -min.
template <int N, bool kMad>
void fit_affine(int n, int nmax, const float* x, const float* w, uint8_t* L, float* scale_out, float* min_out,
                float rmin, float rdelta, int nstep) {
    float xt[kMaxSubLen][N], wt[kMaxSubLen][N];
    int32_t lv[kMaxSubLen][N], aux[kMaxSubLen][N];
    to_lanes<N>(n, x, xt);
    to_lanes<N>(n, w, wt);
    auto err = [](float d) { return kMad ? std::fabs(d) : d * d; };
    float mn[N], mx[N], sum_w[N], sum_x[N], iscale[N], scale[N], best[N];
    for (int k = 0; k < N; ++k) {
        mn[k] = mx[k] = xt[0][k];
        sum_w[k] = wt[0][k];
        sum_x[k] = sum_w[k] * xt[0][k];
    }
    for (int i = 1; i < n; ++i)
#pragma omp simd
        for (int k = 0; k < N; ++k) {
            mn[k] = std::min(mn[k], xt[i][k]);
            mx[k] = std::max(mx[k], xt[i][k]);
            sum_w[k] += wt[i][k];
            sum_x[k] += wt[i][k] * xt[i][k];
        }
    bool flat[N];  // every value the same: all levels 0, scale 0
    float flat_min[N];
    for (int k = 0; k < N; ++k) {
        if (mn[k] > 0) mn[k] = 0;
        flat[k] = mx[k] == mn[k];
        flat_min[k] = mn[k];
        iscale[k] = nmax / (mx[k] - mn[k]);  // inf for a flat sub-block: its results are replaced below
        scale[k] = 1 / iscale[k];
        best[k] = 0;
    }
    for (int i = 0; i < n; ++i)
#pragma omp simd
        for (int k = 0; k < N; ++k) {
            lv[i][k] = level(iscale[k] * (xt[i][k] - mn[k]), 0, nmax);
            best[k] += wt[i][k] * err(scale[k] * lv[i][k] + mn[k] - xt[i][k]);
        }
    for (int is = 0; is <= nstep; ++is) {
        float sum_l[N], sum_l2[N], sum_xl[N], this_scale[N], this_min[N], cur[N];
        bool take[N];
        for (int k = 0; k < N; ++k) {
            iscale[k] = (rmin + rdelta * is + nmax) / (mx[k] - mn[k]);
            sum_l[k] = sum_l2[k] = sum_xl[k] = cur[k] = 0;
        }
        for (int i = 0; i < n; ++i)
#pragma omp simd
            for (int k = 0; k < N; ++k) {
                const int l = level(iscale[k] * (xt[i][k] - mn[k]), 0, nmax);
                aux[i][k] = l;
                sum_l[k] += wt[i][k] * l;
                sum_l2[k] += wt[i][k] * l * l;
                sum_xl[k] += wt[i][k] * l * xt[i][k];
            }
        for (int k = 0; k < N; ++k) {
            const float D = sum_w[k] * sum_l2[k] - sum_l[k] * sum_l[k];
            const float s = (sum_w[k] * sum_xl[k] - sum_x[k] * sum_l[k]) / D;
            const float m = (sum_l2[k] * sum_x[k] - sum_l[k] * sum_xl[k]) / D;
            this_scale[k] = m > 0 ? sum_xl[k] / sum_l2[k] : s;
            this_min[k] = m > 0 ? 0.f : m;
            take[k] = D > 0;
        }
        for (int i = 0; i < n; ++i)
#pragma omp simd
            for (int k = 0; k < N; ++k) cur[k] += wt[i][k] * err(this_scale[k] * aux[i][k] + this_min[k] - xt[i][k]);
        for (int k = 0; k < N; ++k) {
            take[k] = take[k] && cur[k] < best[k];
            best[k] = take[k] ? cur[k] : best[k];
            scale[k] = take[k] ? this_scale[k] : scale[k];
            mn[k] = take[k] ? this_min[k] : mn[k];
        }
        for (int i = 0; i < n; ++i)
#pragma omp simd
            for (int k = 0; k < N; ++k) lv[i][k] = take[k] ? aux[i][k] : lv[i][k];
    }
    for (int k = 0; k < N; ++k) {
        scale_out[k] = flat[k] ? 0.f : scale[k];
        min_out[k] = flat[k] ? -flat_min[k] : -mn[k];
        for (int i = 0; i < n; ++i) L[k * n + i] = flat[k] ? 0 : (uint8_t)lv[i][k];
    }
}

// Q4_K / Q5_K pack eight 6-bit (scale, min) pairs into 12 bytes.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
    if (j < 4) {
        *d = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j - 0] >> 6) << 4);
    }
}

inline void set_scale_min_k4(int j, uint8_t* q, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
        q[j - 4] |= (ls >> 4) << 6;
        q[j - 0] |= (lm >> 4) << 6;
    }
}

// Q3_K packs sixteen 6-bit signed scales (offset 32) into 12 bytes.
inline int get_scale_q3(int j, const uint8_t* s) {
    const int lo = j < 8 ? s[j] & 0xF : s[j - 8] >> 4;
    return (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) - 32;
}

// Inverse of get_scale_q3 for a zeroed scales array; sc in -32..31.
inline void set_scale_q3(int j, uint8_t* s, int sc) {
    const int l = sc + 32;
    if (j < 8) s[j] |= l & 0xF;
    else s[j - 8] |= (l & 0xF) << 4;
    s[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
}

// Q2_K and Q3_K store 2-bit levels, four per byte, 128 values per 32 bytes.
template <typename Code>
void pack_2bit(const Code* L, uint8_t* qs) {
    for (int j = 0; j < QK_K; j += 128)
        for (int l = 0; l < 32; ++l)
            qs[j / 4 + l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 2) | (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
}

// Q4_K and Q5_K share their scale fields (d, dmin, eight packed 6-bit scale/min pairs); only the levels differ.
template <typename Block>
void set_scales_k4(void* b, float d, float dmin, const int* sc, const int* m) {
    Block* blk = (Block*)b;
    std::memset(blk->scales, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; ++j) set_scale_min_k4(j, blk->scales, (uint8_t)sc[j], (uint8_t)m[j]);
    blk->d = f2h(d);
    blk->dmin = f2h(dmin);
}

// Affine sub-blocks of 32 (Q4_K, Q5_K): fit each, then quantize the fits to 6 bits.
void fit_k4_superblock(const float* x, int nmax, float rmin, int nstep, fp16_t* d_out, fp16_t* dmin_out,
                       uint8_t* scales12, uint8_t* L) {
    float mins[QK_K / 32], scales[QK_K / 32], weights[QK_K];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < QK_K / 32; ++j) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; ++l) sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = std::sqrt(sum_x2 / 32);
        for (int l = 0; l < 32; ++l) weights[32 * j + l] = av_x + std::fabs(x[32 * j + l]);
    }
    fit_affine<QK_K / 32, false>(32, nmax, x, weights, L, scales, mins, rmin, 0.1f, nstep);
    for (int j = 0; j < QK_K / 32; ++j) {
        max_scale = std::max(max_scale, scales[j]);
        max_min = std::max(max_min, mins[j]);
    }
    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    std::memset(scales12, 0, K_SCALE_SIZE);
    for (int j = 0; j < QK_K / 32; ++j) {
        const uint8_t ls = (uint8_t)std::min(63, (int)(uint8_t)nearest_int(inv_scale * scales[j]));
        const uint8_t lm = (uint8_t)std::min(63, (int)(uint8_t)nearest_int(inv_min * mins[j]));
        set_scale_min_k4(j, scales12, ls, lm);
    }
    *d_out = f2h(max_scale / 63.f);
    *dmin_out = f2h(max_min / 63.f);
    // final levels against the quantized scales
    for (int j = 0; j < QK_K / 32; ++j) {
        uint8_t sc, m;
        get_scale_min_k4(j, scales12, &sc, &m);
        const float d = h2f(*d_out) * sc;
        if (!d) continue;
        const float dm = h2f(*dmin_out) * m;
        for (int ii = 0; ii < 32; ++ii)
            L[32 * j + ii] = (uint8_t)std::max(0, std::min(nmax, nearest_int((x[32 * j + ii] + dm) / d)));
    }
}

// ---------------------------------------------------------------- Q2_K

void dequantize_q2_K(const void* src, float* y, int64_t n) {
    const block_q2_K* x = (const block_q2_K*)src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        const uint8_t* q = x[i].qs;
        int is = 0;
        for (int half = 0; half < QK_K; half += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int part = 0; part < 2; ++part) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF), ml = dmin * (sc >> 4);
                    for (int l = 0; l < 16; ++l) *y++ = dl * ((int8_t)((q[l + 16 * part] >> shift) & 3)) - ml;
                }
            }
        }
    }
}

void quantize_q2_K(const float* x, void* dst, int64_t n) {
    block_q2_K* y = (block_q2_K*)dst;
    uint8_t L[QK_K];
    float mins[QK_K / 16], scales[QK_K / 16], weights[QK_K];
    const float q4scale = 15.f;
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0, max_min = 0;
        for (int l = 0; l < QK_K; ++l) weights[l] = std::fabs(x[l]);
        fit_affine<QK_K / 16, true>(16, 3, x, weights, L, scales, mins, -0.5f, 0.1f, 15);
        for (int j = 0; j < QK_K / 16; ++j) {
            max_scale = std::max(max_scale, scales[j]);
            max_min = std::max(max_min, mins[j]);
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = f2h(max_scale / q4scale);
        } else {
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] = 0;
            y[i].d = f2h(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < QK_K / 16; ++j) y[i].scales[j] |= (uint8_t)(nearest_int(iscale * mins[j]) << 4);
            y[i].dmin = f2h(max_min / q4scale);
        } else {
            y[i].dmin = f2h(0.f);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = h2f(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d) continue;
            const float dm = h2f(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (uint8_t)std::max(0, std::min(3, nearest_int((x[16 * j + ii] + dm) / d)));
        }
        pack_2bit(L, y[i].qs);
    }
}

void pack_codes_q2_K(void* b, const int32_t* c) { pack_2bit(c, ((block_q2_K*)b)->qs); }
bool scale_q2_K(void* b, float s) {
    block_q2_K* blk = (block_q2_K*)b;
    return scale_field(blk->d, s) & scale_field(blk->dmin, s);
}
void set_scales_q2_K(void* b, float d, float dmin, const int* sc, const int* m) {
    block_q2_K* blk = (block_q2_K*)b;
    for (int j = 0; j < QK_K / 16; ++j) blk->scales[j] = (uint8_t)(sc[j] | (m[j] << 4));
    blk->d = f2h(d);
    blk->dmin = f2h(dmin);
}

// ---------------------------------------------------------------- Q3_K

void dequantize_q3_K(const void* src, float* y, int64_t n) {
    const block_q3_K* x = (const block_q3_K*)src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d_all = h2f(x[i].d);
        const uint8_t* q = x[i].qs;
        const uint8_t* hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int half = 0; half < QK_K; half += 128, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                for (int part = 0; part < 2; ++part) {
                    const float dl = d_all * get_scale_q3(is++, x[i].scales);
                    for (int l = 0; l < 16; ++l) {
                        const int k = l + 16 * part;
                        *y++ = dl * ((int8_t)((q[k] >> shift) & 3) - ((hm[k] & m) ? 0 : 4));
                    }
                }
            }
        }
    }
}

// Codes 0..7: the high bit of each goes to hmask (value j uses bit j / 32 of byte j % 32), the low 2 to qs.
template <typename Code>
void pack_q3_K(block_q3_K& b, const Code* L) {
    std::memset(b.hmask, 0, QK_K / 8);
    uint8_t ul[QK_K];
    for (int j = 0; j < QK_K; ++j) {
        int l = L[j];
        if (l > 3) {
            b.hmask[j % (QK_K / 8)] |= (uint8_t)(1 << (j / (QK_K / 8)));
            l -= 4;
        }
        ul[j] = (uint8_t)l;
    }
    pack_2bit(ul, b.qs);
}

void quantize_q3_K(const float* x, void* dst, int64_t n) {
    block_q3_K* y = (block_q3_K*)dst;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0, amax = 0;
        fit_q3<QK_K / 16>(16, 4, x, L, scales);
        for (int j = 0; j < QK_K / 16; ++j)
            if (std::fabs(scales[j]) > amax) { amax = std::fabs(scales[j]); max_scale = scales[j]; }
        std::memset(y[i].scales, 0, 12);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < QK_K / 16; ++j)
                set_scale_q3(j, y[i].scales, std::max(-32, std::min(31, (int)(int8_t)nearest_int(iscale * scales[j]))));
            y[i].d = f2h(1 / iscale);
        } else {
            y[i].d = f2h(0.f);
        }
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = h2f(y[i].d) * get_scale_q3(j, y[i].scales);
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (int8_t)(std::max(-4, std::min(3, nearest_int(x[16 * j + ii] / d))) + 4);
        }
        pack_q3_K(y[i], L);
    }
}

bool scale_q3_K(void* b, float s) { return scale_field(((block_q3_K*)b)->d, s); }
void pack_codes_q3_K(void* b, const int32_t* c) { pack_q3_K(*(block_q3_K*)b, c); }
void set_scales_q3_K(void* b, float d, float, const int* sc, const int*) {
    block_q3_K* blk = (block_q3_K*)b;
    std::memset(blk->scales, 0, 12);
    for (int j = 0; j < QK_K / 16; ++j) set_scale_q3(j, blk->scales, sc[j]);
    blk->d = f2h(d);
}

// ---------------------------------------------------------------- Q4_K

void dequantize_q4_K(const void* src, float* y, int64_t n) {
    const block_q4_K* x = (const block_q4_K*)src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        const uint8_t* q = x[i].qs;
        for (int is = 0; is < QK_K / 32; is += 2, q += 32) {
            uint8_t sc, m;
            get_scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

// Codes 0..15, in 64-value runs: value l of a run in the low nibble of byte l, value l + 32 in the high one.
template <typename Code>
void pack_q4_K(block_q4_K& b, const Code* L) {
    uint8_t* q = b.qs;
    for (int j = 0; j < QK_K; j += 64, q += 32)
        for (int l = 0; l < 32; ++l) q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
}

void quantize_q4_K(const float* x, void* dst, int64_t n) {
    block_q4_K* y = (block_q4_K*)dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        fit_k4_superblock(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q4_K(y[i], L);
    }
}
void pack_codes_q4_K(void* b, const int32_t* c) { pack_q4_K(*(block_q4_K*)b, c); }

bool scale_q4_K(void* b, float s) {
    block_q4_K* blk = (block_q4_K*)b;
    return scale_field(blk->d, s) & scale_field(blk->dmin, s);
}

// ---------------------------------------------------------------- Q5_K

void dequantize_q5_K(const void* src, float* y, int64_t n) {
    const block_q5_K* x = (const block_q5_K*)src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(x[i].d), dmin = h2f(x[i].dmin);
        const uint8_t* ql = x[i].qs;
        const uint8_t* qh = x[i].qh;
        uint8_t u1 = 1, u2 = 2;
        for (int is = 0; is < QK_K / 32; is += 2, ql += 32, u1 <<= 2, u2 <<= 2) {
            uint8_t sc, m;
            get_scale_min_k4(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = dmin * m;
            get_scale_min_k4(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = dmin * m;
            for (int l = 0; l < 32; ++l) *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; ++l) *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
        }
    }
}

// Codes 0..31: the low 4 bits as Q4_K's, the 5th of each 64-value run's two halves in two bits of qh.
template <typename Code>
void pack_q5_K(block_q5_K& b, const Code* L) {
    uint8_t* qh = b.qh;
    uint8_t* ql = b.qs;
    std::memset(qh, 0, QK_K / 8);
    uint8_t m1 = 1, m2 = 2;
    for (int base = 0; base < QK_K; base += 64, m1 <<= 2, m2 <<= 2, ql += 32) {
        for (int j = 0; j < 32; ++j) {
            int l1 = L[base + j], l2 = L[base + j + 32];
            if (l1 > 15) { l1 -= 16; qh[j] |= m1; }
            if (l2 > 15) { l2 -= 16; qh[j] |= m2; }
            ql[j] = (uint8_t)(l1 | (l2 << 4));
        }
    }
}

void quantize_q5_K(const float* x, void* dst, int64_t n) {
    block_q5_K* y = (block_q5_K*)dst;
    uint8_t L[QK_K];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        fit_k4_superblock(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales, L);
        pack_q5_K(y[i], L);
    }
}
void pack_codes_q5_K(void* b, const int32_t* c) { pack_q5_K(*(block_q5_K*)b, c); }

bool scale_q5_K(void* b, float s) {
    block_q5_K* blk = (block_q5_K*)b;
    return scale_field(blk->d, s) & scale_field(blk->dmin, s);
}

// ---------------------------------------------------------------- Q6_K

void dequantize_q6_K(const void* src, float* y, int64_t n) {
    const block_q6_K* x = (const block_q6_K*)src;
    for (int64_t i = 0; i < n / QK_K; ++i) {
        const float d = h2f(x[i].d);
        const uint8_t* ql = x[i].ql;
        const uint8_t* qh = x[i].qh;
        const int8_t* sc = x[i].scales;
        for (int half = 0; half < QK_K; half += 128, y += 128, ql += 64, qh += 32, sc += 8) {
            for (int l = 0; l < 32; ++l) {
                const int is = l / 16;
                const int8_t q1 = (int8_t)((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                const int8_t q2 = (int8_t)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int8_t q3 = (int8_t)((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int8_t q4 = (int8_t)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l + 0] = d * sc[is + 0] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

// Codes 0..63 in 128-value halves: low 4 bits of values l, l + 64 in ql[l], of l + 32, l + 96 in ql[l + 32];
// the top 2 bits of all four in qh[l].
template <typename Code>
void pack_q6_K(block_q6_K& b, const Code* L) {
    uint8_t* ql = b.ql;
    uint8_t* qh = b.qh;
    for (int j = 0; j < QK_K; j += 128, ql += 64, qh += 32) {
        for (int l = 0; l < 32; ++l) {
            const uint8_t a = (uint8_t)L[j + l], c2 = (uint8_t)L[j + l + 32], c = (uint8_t)L[j + l + 64],
                          e = (uint8_t)L[j + l + 96];
            ql[l + 0] = (a & 0xF) | ((c & 0xF) << 4);
            ql[l + 32] = (c2 & 0xF) | ((e & 0xF) << 4);
            qh[l] = (a >> 4) | ((c2 >> 4) << 2) | ((c >> 4) << 4) | ((e >> 4) << 6);
        }
    }
}

void quantize_q6_K(const float* x, void* dst, int64_t n) {
    block_q6_K* y = (block_q6_K*)dst;
    int8_t L[QK_K];
    float scales[QK_K / 16];
    for (int64_t i = 0; i < n / QK_K; ++i, x += QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        fit_symmetric<QK_K / 16>(16, 32, x, L, scales);
        for (int ib = 0; ib < QK_K / 16; ++ib)
            if (std::fabs(scales[ib]) > max_abs_scale) { max_abs_scale = std::fabs(scales[ib]); max_scale = scales[ib]; }
        if (max_abs_scale < kGroupMaxEps) {
            std::memset(&y[i], 0, sizeof(block_q6_K));
            continue;
        }
        const float iscale = -128.f / max_scale;
        y[i].d = f2h(1 / iscale);
        for (int ib = 0; ib < QK_K / 16; ++ib) y[i].scales[ib] = (int8_t)std::min(127, nearest_int(iscale * scales[ib]));
        for (int j = 0; j < QK_K / 16; ++j) {
            const float d = h2f(y[i].d) * y[i].scales[j];
            if (!d) continue;
            for (int ii = 0; ii < 16; ++ii)
                L[16 * j + ii] = (int8_t)(std::max(-32, std::min(31, nearest_int(x[16 * j + ii] / d))) + 32);
        }
        pack_q6_K(y[i], L);
    }
}
void pack_codes_q6_K(void* b, const int32_t* c) { pack_q6_K(*(block_q6_K*)b, c); }

bool scale_q6_K(void* b, float s) { return scale_field(((block_q6_K*)b)->d, s); }
void set_scales_q6_K(void* b, float d, float, const int* sc, const int*) {
    block_q6_K* blk = (block_q6_K*)b;
    for (int j = 0; j < QK_K / 16; ++j) blk->scales[j] = (int8_t)sc[j];
    blk->d = f2h(d);
}

#define TYPE_ROW(T, NAME, BS, SIZE, SUFFIX, LAYOUT, SET_SCALES, PACK, CMIN, CMAX) \
    {GgmlType::T, NAME, BS, SIZE, dequantize_##SUFFIX, quantize_##SUFFIX, scale_##SUFFIX, LAYOUT, SET_SCALES, PACK, \
     CMIN, CMAX}

//                                                          sub-blocks, sc range, m                        codes
const TypeTraits kTraits[] = {
    TYPE_ROW(F32, "F32", 1, 4, f32, (ScaleLayout{0, 0, 0, 0}), nullptr, nullptr, 0, 0),
    TYPE_ROW(F16, "F16", 1, 2, f16, (ScaleLayout{0, 0, 0, 0}), nullptr, nullptr, 0, 0),
    TYPE_ROW(BF16, "BF16", 1, 2, bf16, (ScaleLayout{0, 0, 0, 0}), nullptr, nullptr, 0, 0),
    TYPE_ROW(Q4_0, "Q4_0", QK4_0, sizeof(block_q4_0), q4_0, (ScaleLayout{1, 0, 0, 0}), set_scales_q4_0,
             pack_codes_q4_0, 0, 15),
    TYPE_ROW(Q4_1, "Q4_1", QK4_1, sizeof(block_q4_1), q4_1, (ScaleLayout{1, 0, 0, -1}), set_scales_q4_1,
             pack_codes_q4_1, 0, 15),
    TYPE_ROW(Q5_0, "Q5_0", QK5_0, sizeof(block_q5_0), q5_0, (ScaleLayout{1, 0, 0, 0}), set_scales_q5_0,
             pack_codes_q5_0, 0, 31),
    TYPE_ROW(Q5_1, "Q5_1", QK5_1, sizeof(block_q5_1), q5_1, (ScaleLayout{1, 0, 0, -1}), set_scales_q5_1,
             pack_codes_q5_1, 0, 31),
    TYPE_ROW(Q8_0, "Q8_0", QK8_0, sizeof(block_q8_0), q8_0, (ScaleLayout{1, 0, 0, 0}), set_scales_q8_0,
             pack_codes_q8_0, -128, 127),
    TYPE_ROW(Q2_K, "Q2_K", QK_K, sizeof(block_q2_K), q2_K, (ScaleLayout{16, 0, 15, 15}), set_scales_q2_K,
             pack_codes_q2_K, 0, 3),
    TYPE_ROW(Q3_K, "Q3_K", QK_K, sizeof(block_q3_K), q3_K, (ScaleLayout{16, -32, 31, 0}), set_scales_q3_K,
             pack_codes_q3_K, 0, 7),
    TYPE_ROW(Q4_K, "Q4_K", QK_K, sizeof(block_q4_K), q4_K, (ScaleLayout{8, 0, 63, 63}), set_scales_k4<block_q4_K>,
             pack_codes_q4_K, 0, 15),
    TYPE_ROW(Q5_K, "Q5_K", QK_K, sizeof(block_q5_K), q5_K, (ScaleLayout{8, 0, 63, 63}), set_scales_k4<block_q5_K>,
             pack_codes_q5_K, 0, 31),
    TYPE_ROW(Q6_K, "Q6_K", QK_K, sizeof(block_q6_K), q6_K, (ScaleLayout{16, -128, 127, 0}), set_scales_q6_K,
             pack_codes_q6_K, 0, 63),
};

}  // namespace

const TypeTraits* traits_for(int32_t type) {
    for (const TypeTraits& t : kTraits)
        if ((int32_t)t.type == type) return &t;
    return nullptr;
}

void dequantize_to_bf16(const TypeTraits& t, const void* src, bf16_t* dst, int64_t n, float* scratch) {
    t.dequantize(src, scratch, n);
    for (int64_t i = 0; i < n; ++i) dst[i] = fp32_to_bf16(scratch[i]);
}

std::string type_name(int32_t type) {
    const TypeTraits* t = traits_for(type);
    return t ? std::string(t->name) : "ggml type " + std::to_string(type);
}

}  // namespace sealgguf
