// Fold a per-input-column scale into a quantized weight matrix, block by block.
#pragma once

#include <cstdint>

namespace sealgguf {

struct FoldStats {
    int64_t blocks_unchanged = 0;    // every scale in the block was 1.0: bytes copied as they were
    int64_t blocks_rescaled = 0;     // one scale for the whole block: only fp16 scale fields rewritten
    int64_t blocks_requantized = 0;  // scales vary inside the block: the better of two candidates (below)
    int64_t blocks_refit = 0;        // of those, blocks that kept their levels with refit scales (refit.h)
                                     // because that beat a fresh quantization of the scaled values
    int64_t source_nonfinite = 0;    // values of the source tensor that are not finite (a broken input)
    double sq_err = 0.0;             // sum of (folded - scale * original)^2
    double sq_ref = 0.0;             // sum of (scale * original)^2

    void add(const FoldStats& o);
    double rel_rmse() const;
};

// sq_err and sq_ref split by column and by row, so that a caller can check each head (a range of columns or of
// rows) without dequantizing the result again. Any pointer may be null; col_* hold n_per_row values, row_* n_rows.
struct ErrorSums {
    double* col_err = nullptr;
    double* col_ref = nullptr;
    double* row_err = nullptr;
    double* row_ref = nullptr;
};

// What the fold did to one block (fold_tensor's optional per-block record).
enum BlockKind : uint8_t { kUnchanged = 0, kRescaled = 1, kRequantized = 2, kRefit = 3 };

// src and dst hold n_rows rows of n_per_row values each in ggml type `type`. Value (r, j) is multiplied
// by row_scales[r] * column_scales[j]; either pointer may be null (all 1.0). A block whose scales are all
// equal is rescaled exactly (only its float scale fields change). A block whose column scales vary inside it
// gets whichever has the lower squared error: ggml's reference quantization of the scaled values, or its own
// levels with scale fields refit by least squares (refit.h). Throws std::invalid_argument on an unsupported
// type, a row length that is not a whole number of blocks, or a scale that is not finite. `kinds`, when not
// null, receives one BlockKind per block (kRefit for a requantized block that kept its levels). refit = false
// leaves out the refit candidate (every requantized block is ggml's reference quantization; for benchmarks).
// `sums`, when given, receives the squared errors per column and per row (zeroed first).
FoldStats fold_tensor(const uint8_t* src, uint8_t* dst, int32_t type, int64_t n_rows, int64_t n_per_row,
                      const float* column_scales, const float* row_scales, int n_threads, uint8_t* kinds = nullptr,
                      bool refit = true, const ErrorSums& sums = ErrorSums{});

}  // namespace sealgguf
