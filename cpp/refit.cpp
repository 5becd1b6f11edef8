#include "refit.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace sealgguf {

namespace {

constexpr int kMaxSub = 16;  // sub-blocks per block, at most (Q2_K, Q3_K, Q6_K)

float fp16_round(float x) { return fp16_to_fp32(fp32_to_fp16(x)); }

// Least-squares statistics of one sub-block: its levels L against the target values t.
struct SubFit {
    double n = 0, sl = 0, sll = 0, st = 0, slt = 0, stt = 0;
    void add(double l, double t) { n += 1; sl += l; sll += l * l; st += t; slt += l * t; stt += t * t; }
    // sum of (a L - b - t)^2 over the sub-block
    double error(double a, double b) const {
        return a * a * sll + n * b * b + stt - 2 * a * slt + 2 * b * st - 2 * a * b * sl;
    }
};

// The integer in [lo, hi] nearest a / d (d != 0).
inline int multiplier(float a, float d, int lo, int hi) { return std::clamp((int)std::nearbyintf(a / d), lo, hi); }

// Integer multipliers k[j] in [lo, hi] and one fp16 step d with d * k[j] ~ a[j], minimizing
// sum_j w[j] (d k[j] - a[j])^2. Trial steps: the largest-magnitude target over the top of the range (ggml's
// choice), and each a[j] divided by the few largest multipliers that keep the largest target in range.
// Writes the best `keep` trial steps to `best`, best first, and returns how many (at least 1: 0 alone when
// every a[j] is 0).
int fit_step(int n, const float* a, const double* w, int lo, int hi, float* best, int keep) {
    float amax = 0, signed_max = 0;
    for (int j = 0; j < n; ++j)
        if (std::fabs(a[j]) > amax) { amax = std::fabs(a[j]); signed_max = a[j]; }
    best[0] = 0.f;
    if (amax == 0) return 1;
    // unsigned ranges (K-quant scales and mins) follow the sign of the largest target; signed ones use d > 0
    const float sign = (lo >= 0 && signed_max < 0) ? -1.f : 1.f;
    const int top = std::max(hi, -lo);
    constexpr int kTries = 5, kMaxTrials = 1 + kMaxSub * kTries;
    float step[kMaxTrials];
    double err[kMaxTrials];
    int order[kMaxTrials], n_trials = 0;
    auto add = [&](float d) {
        d = fp16_round(d);
        if (d == 0 || !std::isfinite(d)) return;
        double e = 0;
        for (int j = 0; j < n; ++j) {
            const double r = (double)d * multiplier(a[j], d, lo, hi) - a[j];
            e += w[j] * r * r;
        }
        step[n_trials] = d, err[n_trials] = e, order[n_trials] = n_trials;
        ++n_trials;
    };
    add(sign * amax / top);
    for (int j = 0; j < n; ++j) {
        const int k_top = (int)std::floor(std::fabs(a[j]) / amax * (top + 0.49f));
        for (int kk = std::max(1, k_top - kTries + 1); kk <= k_top; ++kk) add(sign * std::fabs(a[j]) / kk);
    }
    if (n_trials == 0) return 1;
    keep = std::min(keep, n_trials);
    std::partial_sort(order, order + keep, order + n_trials, [&](int x, int y) { return err[x] < err[y]; });
    for (int i = 0; i < keep; ++i) best[i] = step[order[i]];
    return keep;
}

void multipliers(int n, const float* a, float d, int lo, int hi, int* k) {
    for (int j = 0; j < n; ++j) k[j] = d != 0 ? multiplier(a[j], d, lo, hi) : std::max(lo, 0);
}

}  // namespace

double refit_error_bound(const TypeTraits& t, const float* values, const float* target) {
    const ScaleLayout& lay = t.layout;
    if (!t.set_scales) return INFINITY;
    const int sub = t.block_size / lay.n_sub;
    double bound = 0;
    for (int j = 0; j < lay.n_sub; ++j) {
        SubFit f;
        for (int i = j * sub; i < (j + 1) * sub; ++i) f.add(values[i], target[i]);
        double explained;  // the part of sum t^2 the best fit accounts for
        if (lay.m_max != 0) {
            const double var = f.n * f.sll - f.sl * f.sl, cov = f.n * f.slt - f.sl * f.st;
            explained = f.st * f.st / f.n + (var > 0 ? cov * cov / (var * f.n) : 0);
        } else {
            explained = f.sll > 0 ? f.slt * f.slt / f.sll : 0;
        }
        bound += std::max(0.0, f.stt - explained);
    }
    return bound;
}

bool refit_scales(const TypeTraits& t, const uint8_t* src, const float* target, uint8_t* out) {
    const ScaleLayout& lay = t.layout;
    if (!t.set_scales) return false;
    const int n_sub = lay.n_sub, sub = t.block_size / n_sub;
    const bool has_sc = lay.sc_max != 0, affine = lay.m_max != 0;

    // the levels: the same block with every scale 1 and every min 0
    int ones[kMaxSub], zeros[kMaxSub];
    std::fill(ones, ones + kMaxSub, 1);
    std::fill(zeros, zeros + kMaxSub, 0);
    std::memcpy(out, src, t.type_size);
    t.set_scales(out, 1.f, 0.f, ones, zeros);
    float L[QK_K];  // the largest block
    t.dequantize(out, L, t.block_size);

    // per sub-block: target ~ A * L - B (B = 0 for the symmetric types), least squares
    SubFit fit[kMaxSub];
    float A[kMaxSub], B[kMaxSub];
    double wA[kMaxSub], wB[kMaxSub];
    for (int j = 0; j < n_sub; ++j) {
        SubFit& f = fit[j];
        for (int i = j * sub; i < (j + 1) * sub; ++i) f.add(L[i], target[i]);
        if (affine) {
            const double var = f.n * f.sll - f.sl * f.sl;  // n^2 times the variance of L
            A[j] = var > 0 ? (float)((f.n * f.slt - f.sl * f.st) / var) : 0.f;
            wA[j] = var / f.n;  // the error of a given A, with B re-solved: (A' - A)^2 * sum (L - mean L)^2
        } else {
            A[j] = f.sll > 0 ? (float)(f.slt / f.sll) : 0.f;
            wA[j] = f.sll;
        }
    }

    int sc[kMaxSub], m[kMaxSub];
    if (!has_sc) {  // the legacy types: d (and the float min) by least squares
        const float d = fp16_round(A[0]);
        const SubFit& f = fit[0];
        t.set_scales(out, d, affine ? (float)((d * f.sl - f.st) / f.n) : 0.f, ones, ones);
        return true;
    }
    // the super-block step d and the integer sub-block scales
    constexpr int kSteps = 8;  // steps tried with their mins (affine K-quants)
    float steps[kSteps];
    const int n_steps = fit_step(n_sub, A, wA, lay.sc_min, lay.sc_max, steps, kSteps);
    if (!affine) {
        multipliers(n_sub, A, steps[0], lay.sc_min, lay.sc_max, sc);
        t.set_scales(out, steps[0], 0.f, sc, zeros);
        return true;
    }
    // K-quants with mins: for the best few steps, the mins re-solved for the rounded scales (B = (A' sum L -
    // sum t) / n), quantized the same way; then d and dmin polished by least squares for those integers.
    // The combination with the lowest error over the block wins.
    double best = INFINITY;
    float best_d = 0, best_dmin = 0;
    int best_sc[kMaxSub], best_m[kMaxSub];
    auto total = [&](float d, float dmin, const int* k, const int* mm) {
        double e = 0;
        for (int j = 0; j < n_sub; ++j) e += fit[j].error((double)d * k[j], (double)dmin * mm[j]);
        return e;
    };
    auto keep = [&](float d, float dmin) {
        const double e = total(d, dmin, sc, m);
        if (e < best) {
            best = e, best_d = d, best_dmin = dmin;
            std::copy(sc, sc + n_sub, best_sc);
            std::copy(m, m + n_sub, best_m);
        }
    };
    for (int c = 0; c < n_steps; ++c) {
        const float d = steps[c];
        multipliers(n_sub, A, d, lay.sc_min, lay.sc_max, sc);
        for (int j = 0; j < n_sub; ++j) {
            B[j] = (float)(((double)d * sc[j] * fit[j].sl - fit[j].st) / fit[j].n);
            wB[j] = fit[j].n;
        }
        float dmin;
        fit_step(n_sub, B, wB, 0, lay.m_max, &dmin, 1);
        multipliers(n_sub, B, dmin, 0, lay.m_max, m);
        keep(d, dmin);
        // value = d (sc L) - dmin m: least squares in (d, dmin) with the integers fixed
        double xx = 0, xy = 0, yy = 0, xt = 0, yt = 0;
        for (int j = 0; j < n_sub; ++j) {
            const SubFit& f = fit[j];
            xx += sc[j] * sc[j] * f.sll, xy += sc[j] * m[j] * f.sl, yy += m[j] * m[j] * f.n;
            xt += sc[j] * f.slt, yt += m[j] * f.st;
        }
        const double det = xx * yy - xy * xy;
        if (det > 0)
            keep(fp16_round((float)((xt * yy - yt * xy) / det)), fp16_round((float)((xt * xy - yt * xx) / det)));
    }
    std::copy(best_sc, best_sc + n_sub, sc);
    std::copy(best_m, best_m + n_sub, m);
    t.set_scales(out, best_d, best_dmin, sc, m);
    return true;
}

}  // namespace sealgguf
