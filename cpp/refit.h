// The second candidate for a block whose scales vary inside it: keep its quantized levels and refit only
// its scale fields (d, dmin and the integer sub-block scales) to the scaled values by least squares.
#pragma once

#include <cstdint>

#include "quants.h"

namespace sealgguf {

// Writes into `out` the block `src` with its levels unchanged and its scale fields refit to `target`
// (block_size values). Returns false for a type without levels (the float types).
bool refit_scales(const TypeTraits& t, const uint8_t* src, const float* target, uint8_t* out);

// A lower bound on the squared error of refit_scales, from the block's dequantized values alone: within a
// sub-block the values are an affine function of the levels, so the least-squares fit of the target on the
// values (with an intercept where the type has mins) is the refit with its scales unrounded. (Where a
// sub-block's scale is 0 its values are constant and the bound can exceed the refit's error; the fold then
// merely skips a refit that could have won.)
double refit_error_bound(const TypeTraits& t, const float* values, const float* target);

}  // namespace sealgguf
