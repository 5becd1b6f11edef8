#include "fold.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <thread>
#include <vector>

#include "quants.h"
#include "refit.h"

namespace sealgguf {

void FoldStats::add(const FoldStats& o) {
    blocks_unchanged += o.blocks_unchanged;
    blocks_rescaled += o.blocks_rescaled;
    blocks_requantized += o.blocks_requantized;
    blocks_refit += o.blocks_refit;
    source_nonfinite += o.source_nonfinite;
    sq_err += o.sq_err;
    sq_ref += o.sq_ref;
}

double FoldStats::rel_rmse() const { return sq_ref > 0 ? std::sqrt(sq_err / sq_ref) : 0.0; }

namespace {

// Returns the block's single scale, or NAN when the scales differ inside the block.
float uniform_scale(const float* s, int n) {
    for (int i = 1; i < n; ++i)
        if (s[i] != s[0]) return NAN;
    return s[0];
}

// Squared error of a against b over n values. The omp simd pragmas (-fopenmp-simd: no OpenMP runtime) let the
// compiler vectorize these sums, which -fno-fast-math otherwise keeps in order.
double sq_error(const float* a, const float* b, int n) {
    double e = 0;
#pragma omp simd reduction(+ : e)
    for (int i = 0; i < n; ++i) {
        const double r = (double)a[i] - (double)b[i];
        e += r * r;
    }
    return e;
}

// Adds one block's squared error (got - want)^2 and want^2 to the column sums and to the totals err and ref.
void add_block(const float* got, const float* want, int n, double* col_err, double* col_ref, double& err,
               double& ref_total) {
    double e = 0, ref = 0;
#pragma omp simd reduction(+ : e, ref)
    for (int i = 0; i < n; ++i) {
        const double r = (double)got[i] - (double)want[i], w = (double)want[i] * (double)want[i];
        col_err[i] += r * r;
        col_ref[i] += w;
        e += r * r;
        ref += w;
    }
    err += e;
    ref_total += ref;
}

int count_nonfinite(const float* x, int n) {  // int, not int64_t: a block's count, and half the vector work
    int k = 0;
#pragma omp simd reduction(+ : k)
    for (int i = 0; i < n; ++i) k += !std::isfinite(x[i]);
    return k;
}

// Folds rows [0, n_rows) of one thread's share. col_err / col_ref are this thread's own column sums (n_per_row
// values, zeroed); row_err / row_ref point at its rows' entries (or are null).
FoldStats fold_rows(const TypeTraits& t, const uint8_t* src, uint8_t* dst, int64_t n_rows, int64_t n_per_row,
                    const float* column_scales, const float* row_scales, uint8_t* kinds, bool try_refit,
                    double* col_err, double* col_ref, double* row_err, double* row_ref) {
    const int bs = t.block_size;
    const int64_t blocks_per_row = n_per_row / bs;
    const size_t row_bytes = (size_t)blocks_per_row * t.type_size;
    std::vector<float> orig(bs), target(bs), folded(bs), refit_folded(bs), ones(bs, 1.0f);
    std::vector<uint8_t> refit(t.type_size);
    std::vector<float> block_scale(blocks_per_row, 1.0f);  // per column block: its one column scale, or NAN
    for (int64_t b = 0; column_scales && b < blocks_per_row; ++b)
        block_scale[b] = uniform_scale(column_scales + b * bs, bs);
    FoldStats st;
    for (int64_t r = 0; r < n_rows; ++r) {
        const float rs = row_scales ? row_scales[r] : 1.0f;
        const uint8_t* srow = src + r * row_bytes;
        uint8_t* drow = dst + r * row_bytes;
        double err = 0, ref = 0;  // this row's
        for (int64_t b = 0; b < blocks_per_row; ++b) {
            const uint8_t* sb = srow + b * t.type_size;
            uint8_t* db = drow + b * t.type_size;
            const float* s = column_scales ? column_scales + b * bs : ones.data();
            t.dequantize(sb, orig.data(), bs);
            st.source_nonfinite += count_nonfinite(orig.data(), bs);
            for (int i = 0; i < bs; ++i) target[i] = orig[i] * (s[i] * rs);

            const float u = block_scale[b] * rs;
            std::memcpy(db, sb, t.type_size);
            BlockKind kind = kRequantized;
            if (u == 1.0f) {
                ++st.blocks_unchanged;
                kind = kUnchanged;
            } else if (!std::isnan(u) && t.scale_block(db, u)) {
                ++st.blocks_rescaled;
                kind = kRescaled;
            }
            if (kind == kUnchanged) {
                std::copy(orig.begin(), orig.end(), folded.begin());  // the same bytes
            } else if (kind == kRescaled) {
                t.dequantize(db, folded.data(), bs);
            } else {
                // two candidates: a fresh quantization, and the original levels with refit scales
                ++st.blocks_requantized;
                t.quantize(target.data(), db, bs);
                t.dequantize(db, folded.data(), bs);
                const double fresh = sq_error(folded.data(), target.data(), bs);
                // the refit is built only when its error bound says it can win
                if (try_refit && refit_error_bound(t, orig.data(), target.data()) < fresh * (1 - 1e-6) &&
                    refit_scales(t, sb, target.data(), refit.data())) {
                    t.dequantize(refit.data(), refit_folded.data(), bs);
                    if (sq_error(refit_folded.data(), target.data(), bs) < fresh) {  // false for a non-finite refit
                        std::memcpy(db, refit.data(), t.type_size);
                        std::swap(folded, refit_folded);
                        ++st.blocks_refit;
                        kind = kRefit;
                    }
                }
            }
            if (kinds) kinds[r * blocks_per_row + b] = kind;
            add_block(folded.data(), target.data(), bs, col_err + b * bs, col_ref + b * bs, err, ref);
        }
        st.sq_err += err;
        st.sq_ref += ref;
        if (row_err) row_err[r] = err;
        if (row_ref) row_ref[r] = ref;
    }
    return st;
}

}  // namespace

FoldStats fold_tensor(const uint8_t* src, uint8_t* dst, int32_t type, int64_t n_rows, int64_t n_per_row,
                      const float* column_scales, const float* row_scales, int n_threads, uint8_t* kinds,
                      bool refit, const ErrorSums& sums) {
    const TypeTraits* t = traits_for(type);
    if (!t) throw std::invalid_argument("cannot fold tensors of type " + type_name(type));
    if (n_per_row % t->block_size != 0)
        throw std::invalid_argument("row of " + std::to_string(n_per_row) + " values is not a whole number of " +
                                    t->name + " blocks");
    for (int64_t i = 0; column_scales && i < n_per_row; ++i)
        if (!std::isfinite(column_scales[i]))
            throw std::invalid_argument("scale for column " + std::to_string(i) + " is not finite");
    for (int64_t i = 0; row_scales && i < n_rows; ++i)
        if (!std::isfinite(row_scales[i]))
            throw std::invalid_argument("scale for row " + std::to_string(i) + " is not finite");

    const size_t row_bytes = (size_t)(n_per_row / t->block_size) * t->type_size;
    n_threads = (int)std::max<int64_t>(1, std::min<int64_t>(n_threads, n_rows));
    std::vector<FoldStats> parts(n_threads);
    std::vector<std::vector<double>> col_err(n_threads), col_ref(n_threads);  // each thread's column sums
    std::vector<std::thread> workers;
    const int64_t chunk = (n_rows + n_threads - 1) / n_threads;
    for (int w = 0; w < n_threads; ++w) {
        const int64_t r0 = w * chunk, r1 = std::min(n_rows, r0 + chunk);
        if (r0 >= r1) break;
        workers.emplace_back([=, &parts, &col_err, &col_ref] {
            col_err[w].assign(n_per_row, 0.0);
            col_ref[w].assign(n_per_row, 0.0);
            parts[w] = fold_rows(*t, src + r0 * row_bytes, dst + r0 * row_bytes, r1 - r0, n_per_row, column_scales,
                                 row_scales ? row_scales + r0 : nullptr,
                                 kinds ? kinds + r0 * (n_per_row / t->block_size) : nullptr, refit,
                                 col_err[w].data(), col_ref[w].data(), sums.row_err ? sums.row_err + r0 : nullptr,
                                 sums.row_ref ? sums.row_ref + r0 : nullptr);
        });
    }
    for (std::thread& th : workers) th.join();
    FoldStats total;
    for (const FoldStats& p : parts) total.add(p);
    for (int64_t j = 0; j < n_per_row; ++j) {
        double e = 0, r = 0;
        for (size_t w = 0; w < workers.size(); ++w) {
            e += col_err[w][j];
            r += col_ref[w][j];
        }
        if (sums.col_err) sums.col_err[j] = e;
        if (sums.col_ref) sums.col_ref[j] = r;
    }
    return total;
}

}  // namespace sealgguf
