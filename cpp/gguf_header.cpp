#include "gguf_header.h"

#include <cstring>

namespace sealgguf {

int64_t string_array_end(const uint8_t* buf, int64_t size, int64_t pos, uint64_t count) {
    for (uint64_t i = 0; i < count; ++i) {
        if (pos < 0 || size - pos < 8) return -1;
        uint64_t n;
        std::memcpy(&n, buf + pos, 8);  // GGUF is little-endian, as is every platform sealgguf builds on
        pos += 8;
        if (n > (uint64_t)(size - pos)) return -1;
        pos += (int64_t)n;
    }
    return pos;
}

}  // namespace sealgguf
