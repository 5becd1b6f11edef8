// The one part of reading a GGUF header that is too slow in Python: walking a string array (a vocabulary holds
// 10^5 strings, each a u64 length then its bytes).
#pragma once

#include <cstdint>

namespace sealgguf {

// The offset just past an array of `count` GGUF strings that begins at `pos` in a buffer of `size` bytes, or -1
// when the array runs past the end of the buffer.
int64_t string_array_end(const uint8_t* buf, int64_t size, int64_t pos, uint64_t count);

}  // namespace sealgguf
