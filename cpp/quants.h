// One dequantize and one quantize function per block type, plus a table that describes each type.
#pragma once

#include <cstdint>
#include <string>

#include "blocks.h"

namespace sealgguf {

using DequantizeFn = void (*)(const void* src, float* dst, int64_t n);
using QuantizeFn = void (*)(const float* src, void* dst, int64_t n);
// Multiply every value of one block by s by rewriting only its float scale fields
// (d, and dmin / m where the type has them). Returns false when a field would overflow.
using ScaleBlockFn = bool (*)(void* block, float s);

// How a block's values come from its integer levels L: value = d * sc[j] * L - dmin * m[j] in sub-block j.
// The legacy types have one sub-block and no integer scale (sc = 1): value = d * L - dmin (Q4_1 / Q5_1 store
// m = -dmin). The float types have no levels.
struct ScaleLayout {
    int n_sub;           // sub-blocks per block, each with its own scale (0: a float type)
    int sc_min, sc_max;  // range of the integer sub-block scale; 0, 0: none (the legacy types)
    int m_max;           // 0: no min; > 0: integer sub-block mins 0..m_max; -1: one float min (Q4_1, Q5_1)
};
// Write a block's scale fields (d, dmin and the sub-block sc[] / m[] where the layout has them), leaving its
// levels as they are. sc and m may be null for the legacy types.
using SetScalesFn = void (*)(void* block, float d, float dmin, const int* sc, const int* m);
// Write a block's codes (block_size integers in value order, each in [code_min, code_max]: the integers the
// block stores, e.g. 0..15 for Q4_0, whose value is (code - 8) * d), leaving its scale fields as they are.
// Within a sub-block the value is an affine function of the code.
using PackCodesFn = void (*)(void* block, const int32_t* codes);

struct TypeTraits {
    GgmlType type;
    const char* name;
    int block_size;    // values per block
    size_t type_size;  // bytes per block
    DequantizeFn dequantize;
    QuantizeFn quantize;
    ScaleBlockFn scale_block;
    ScaleLayout layout;
    SetScalesFn set_scales;  // nullptr for the float types
    PackCodesFn pack_codes;  // nullptr for the float types
    int code_min, code_max;
};

// Dequantize one row of n values straight to bfloat16 (round to nearest even, as torch's float -> bfloat16),
// through `scratch` (n floats): the float32 row never exists beyond one row.
void dequantize_to_bf16(const TypeTraits& t, const void* src, bf16_t* dst, int64_t n, float* scratch);

// nullptr when the type is not one sealgguf can fold (IQ*, TQ*, Q8_1, ...).
const TypeTraits* traits_for(int32_t type);
std::string type_name(int32_t type);

}  // namespace sealgguf
