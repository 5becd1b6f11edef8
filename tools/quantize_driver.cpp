// Quantize float32 values from a file with the engine's quantizers, once per ggml type id given, and write each
// result's raw bytes to OUT.<type>. Built for another CPU by tools/cross_check.py, to compare its bytes with ggml's.
//     quantize_driver IN.f32 N_VALUES OUT TYPE...
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "quants.h"

int main(int argc, char** argv) {
    if (argc < 5) {
        std::fprintf(stderr, "usage: %s IN.f32 N_VALUES OUT TYPE...\n", argv[0]);
        return 2;
    }
    const long n = std::atol(argv[2]);
    std::vector<float> x(n);
    FILE* in = std::fopen(argv[1], "rb");
    if (!in || std::fread(x.data(), sizeof(float), n, in) != (size_t)n) {
        std::fprintf(stderr, "%s: cannot read %ld float32 values\n", argv[1], n);
        return 2;
    }
    std::fclose(in);
    for (int a = 4; a < argc; ++a) {
        const int type = std::atoi(argv[a]);
        const sealgguf::TypeTraits* t = sealgguf::traits_for(type);
        if (!t || n % t->block_size) {
            std::fprintf(stderr, "type %d: not a quantizable type, or %ld values are not whole blocks\n", type, n);
            return 2;
        }
        std::vector<uint8_t> out(n / t->block_size * t->type_size);
        t->quantize(x.data(), out.data(), n);
        const std::string path = std::string(argv[3]) + "." + std::to_string(type);
        FILE* o = std::fopen(path.c_str(), "wb");
        if (!o || std::fwrite(out.data(), 1, out.size(), o) != out.size()) {
            std::fprintf(stderr, "%s: cannot write\n", path.c_str());
            return 2;
        }
        std::fclose(o);
    }
    return 0;
}
