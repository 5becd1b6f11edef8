// The engine's quantizers and fold on float32 rows from a file, for each ggml type id given, writing each result's
// raw bytes to OUT.<type>: the values quantized, and then that tensor folded with per-column scales (refit
// candidate on, one thread). Built for another CPU by tools/cross_check.py, to compare its bytes with this CPU's.
//     quantize_driver IN.f32 ROWS COLS SCALES.f32 OUT TYPE...
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "fold.h"
#include "quants.h"

namespace {

bool read_floats(const char* path, std::vector<float>& x) {
    FILE* f = std::fopen(path, "rb");
    const bool ok = f && std::fread(x.data(), sizeof(float), x.size(), f) == x.size();
    if (f) std::fclose(f);
    if (!ok) std::fprintf(stderr, "%s: cannot read %zu float32 values\n", path, x.size());
    return ok;
}

bool write_bytes(const std::string& path, const std::vector<uint8_t>& b) {
    FILE* f = std::fopen(path.c_str(), "wb");
    const bool ok = f && std::fwrite(b.data(), 1, b.size(), f) == b.size();
    if (f) std::fclose(f);
    if (!ok) std::fprintf(stderr, "%s: cannot write\n", path.c_str());
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 7) {
        std::fprintf(stderr, "usage: %s IN.f32 ROWS COLS SCALES.f32 OUT TYPE...\n", argv[0]);
        return 2;
    }
    const long rows = std::atol(argv[2]), cols = std::atol(argv[3]);
    std::vector<float> x(rows * cols), scales(cols);
    if (!read_floats(argv[1], x) || !read_floats(argv[4], scales)) return 2;
    for (int a = 6; a < argc; ++a) {
        const int type = std::atoi(argv[a]);
        const sealgguf::TypeTraits* t = sealgguf::traits_for(type);
        if (!t || cols % t->block_size) {
            std::fprintf(stderr, "type %d: not a quantizable type, or rows of %ld values are not whole blocks\n", type,
                         cols);
            return 2;
        }
        std::vector<uint8_t> raw(rows * cols / t->block_size * t->type_size), folded(raw.size());
        t->quantize(x.data(), raw.data(), rows * cols);
        sealgguf::fold_tensor(raw.data(), folded.data(), type, rows, cols, scales.data(), nullptr, 1);
        const std::string out = std::string(argv[5]) + "." + std::to_string(type);
        if (!write_bytes(out + ".quantized", raw) || !write_bytes(out + ".folded", folded)) return 2;
    }
    return 0;
}
