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

struct TypeTraits {
    GgmlType type;
    const char* name;
    int block_size;    // values per block
    size_t type_size;  // bytes per block
    DequantizeFn dequantize;
    QuantizeFn quantize;
    ScaleBlockFn scale_block;
};

// nullptr when the type is not one sealgguf can fold (IQ*, TQ*, Q8_1, ...).
const TypeTraits* traits_for(int32_t type);
std::string type_name(int32_t type);

}  // namespace sealgguf
