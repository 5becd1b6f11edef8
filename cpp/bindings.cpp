// Python bindings: the only file that knows about Python. Exposed as sealgguf._core.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "fold.h"
#include "gguf_header.h"
#include "quants.h"

namespace py = pybind11;
using namespace sealgguf;

namespace {

const TypeTraits& require_type(int32_t type) {
    const TypeTraits* t = traits_for(type);
    if (!t) throw std::invalid_argument("unsupported ggml type " + type_name(type));
    return *t;
}

size_t row_bytes(const TypeTraits& t, int64_t n_per_row) {
    if (n_per_row <= 0 || n_per_row % t.block_size != 0)
        throw std::invalid_argument("row length " + std::to_string(n_per_row) + " is not a multiple of the " +
                                    t.name + " block size " + std::to_string(t.block_size));
    return (size_t)(n_per_row / t.block_size) * t.type_size;
}

using Bytes = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;
using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;

// row(source row, output row) over every row of a raw tensor, into a new [rows, n_per_row] array, GIL released.
template <typename Out, typename RowFn>
py::array_t<Out> map_rows(Bytes raw, const TypeTraits& t, int64_t n_per_row, RowFn row) {
    const size_t rb = row_bytes(t, n_per_row);
    if ((size_t)raw.size() % rb != 0)
        throw std::invalid_argument(std::to_string(raw.size()) + " bytes is not a whole number of rows");
    const int64_t n_rows = raw.size() / rb;
    py::array_t<Out> out({n_rows, n_per_row});
    const uint8_t* src = raw.data();
    Out* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < n_rows; ++r) row(src + r * rb, dst + r * n_per_row);
    }
    return out;
}

py::array_t<float> dequantize(Bytes raw, int32_t type, int64_t n_per_row) {
    const TypeTraits& t = require_type(type);
    return map_rows<float>(raw, t, n_per_row, [&](const uint8_t* s, float* d) { t.dequantize(s, d, n_per_row); });
}

// The same rows as bfloat16 bits (uint16: numpy has no bfloat16; torch views them as bfloat16).
py::array_t<uint16_t> dequantize_bf16(Bytes raw, int32_t type, int64_t n_per_row) {
    const TypeTraits& t = require_type(type);
    std::vector<float> scratch(n_per_row);
    return map_rows<uint16_t>(raw, t, n_per_row, [&](const uint8_t* s, uint16_t* d) {
        dequantize_to_bf16(t, s, d, n_per_row, scratch.data());
    });
}

py::array_t<uint8_t> quantize(Floats values, int32_t type) {
    const TypeTraits& t = require_type(type);
    if (values.ndim() != 2) throw std::invalid_argument("quantize expects a 2-D float32 array [rows, n_per_row]");
    const int64_t n_rows = values.shape(0), n_per_row = values.shape(1);
    const size_t rb = row_bytes(t, n_per_row);
    py::array_t<uint8_t> out({n_rows, (int64_t)rb});
    const float* src = values.data();
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        for (int64_t r = 0; r < n_rows; ++r) t.quantize(src + r * n_per_row, dst + r * rb, n_per_row);
    }
    return out;
}

using Ints = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

// The blocks of `raw` with their codes replaced by `codes` ([rows, n_per_row]) and their scale fields kept.
py::array_t<uint8_t> pack_codes(Bytes raw, int32_t type, int64_t n_per_row, Ints codes) {
    const TypeTraits& t = require_type(type);
    if (!t.pack_codes) throw std::invalid_argument(std::string(t.name) + " has no codes");
    const size_t rb = row_bytes(t, n_per_row);
    const int64_t n_rows = raw.size() / (int64_t)rb;
    if ((size_t)raw.size() % rb != 0 || codes.ndim() != 2 || codes.shape(0) != n_rows || codes.shape(1) != n_per_row)
        throw std::invalid_argument("codes must be [" + std::to_string(n_rows) + ", " + std::to_string(n_per_row) +
                                    "] for these blocks");
    const int32_t* c = codes.data();
    for (py::ssize_t i = 0; i < codes.size(); ++i)
        if (c[i] < t.code_min || c[i] > t.code_max)
            throw std::invalid_argument("code " + std::to_string(c[i]) + " is outside " + t.name + "'s range " +
                                        std::to_string(t.code_min) + ".." + std::to_string(t.code_max));
    py::array_t<uint8_t> out({n_rows, (int64_t)rb});
    std::memcpy(out.mutable_data(), raw.data(), raw.size());
    uint8_t* dst = out.mutable_data();
    const int64_t n_blocks = n_rows * (n_per_row / t.block_size);
    for (int64_t b = 0; b < n_blocks; ++b) t.pack_codes(dst + b * t.type_size, c + b * t.block_size);
    return out;
}

py::tuple fold(Bytes raw, int32_t type, int64_t n_per_row, std::optional<Floats> column_scales, int n_threads,
               std::optional<Floats> row_scales, bool refit) {
    const TypeTraits& t = require_type(type);
    const size_t rb = row_bytes(t, n_per_row);
    if ((size_t)raw.size() % rb != 0)
        throw std::invalid_argument(std::to_string(raw.size()) + " bytes is not a whole number of rows");
    const int64_t n_rows = raw.size() / rb;
    if (column_scales && (column_scales->ndim() != 1 || column_scales->shape(0) != n_per_row))
        throw std::invalid_argument("column_scales must have " + std::to_string(n_per_row) + " entries, got " +
                                    std::to_string(column_scales->size()));
    if (row_scales && (row_scales->ndim() != 1 || row_scales->shape(0) != n_rows))
        throw std::invalid_argument("row_scales must have " + std::to_string(n_rows) + " entries, got " +
                                    std::to_string(row_scales->size()));
    if (n_threads <= 0) n_threads = (int)std::max(1u, std::thread::hardware_concurrency());
    py::array_t<uint8_t> out({n_rows, (int64_t)rb});
    py::array_t<uint8_t> kinds({n_rows, n_per_row / t.block_size});
    const float* cols = column_scales ? column_scales->data() : nullptr;
    const float* rows = row_scales ? row_scales->data() : nullptr;
    py::array_t<double> col_err(n_per_row), col_ref(n_per_row), row_err(n_rows), row_ref(n_rows);
    const ErrorSums sums{col_err.mutable_data(), col_ref.mutable_data(), row_err.mutable_data(),
                         row_ref.mutable_data()};
    FoldStats st;
    {
        py::gil_scoped_release release;
        st = fold_tensor(raw.data(), out.mutable_data(), type, n_rows, n_per_row, cols, rows, n_threads,
                         kinds.mutable_data(), refit, sums);
    }
    py::dict stats;
    stats["blocks_unchanged"] = st.blocks_unchanged;
    stats["blocks_rescaled"] = st.blocks_rescaled;
    stats["blocks_requantized"] = st.blocks_requantized;
    stats["blocks_refit"] = st.blocks_refit;
    stats["rel_rmse"] = st.rel_rmse();
    stats["source_nonfinite"] = st.source_nonfinite;
    // squared error against the exactly scaled values, and their squares, summed per column and per row
    stats["col_sq_err"] = col_err;
    stats["col_sq_ref"] = col_ref;
    stats["row_sq_err"] = row_err;
    stats["row_sq_ref"] = row_ref;
    stats["block_kinds"] = kinds;  // [rows, blocks per row]: 0 unchanged, 1 rescaled, 2 requantized, 3 refit
    return py::make_tuple(out, stats);
}

int64_t string_array_end_py(py::buffer buf, int64_t pos, uint64_t count) {
    const py::buffer_info info = buf.request();
    const int64_t size = info.size * info.itemsize;
    py::gil_scoped_release release;
    return string_array_end((const uint8_t*)info.ptr, size, pos, count);
}

py::tuple block_info(int32_t type) {
    const TypeTraits& t = require_type(type);
    return py::make_tuple(t.block_size, t.type_size);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "sealgguf C++ engine: ggml block formats and scale folding";
    m.def("dequantize", &dequantize, py::arg("raw"), py::arg("type"), py::arg("n_per_row"),
          "Dequantize rows of a ggml tensor to float32, shape [rows, n_per_row].");
    m.def("dequantize_bf16", &dequantize_bf16, py::arg("raw"), py::arg("type"), py::arg("n_per_row"),
          "Dequantize rows of a ggml tensor straight to bfloat16 (round to nearest even), as uint16 bits "
          "[rows, n_per_row]; no float32 copy of the tensor is made.");
    m.def("quantize", &quantize, py::arg("values"), py::arg("type"),
          "Quantize a float32 [rows, n_per_row] array with the reference quantizer of `type`.");
    m.def("fold", &fold, py::arg("raw"), py::arg("type"), py::arg("n_per_row"), py::arg("column_scales"),
          py::arg("n_threads") = 0, py::arg("row_scales") = py::none(), py::arg("refit") = true,
          "Multiply value (i, j) of a quantized [rows, n_per_row] tensor by row_scales[i] * column_scales[j] "
          "(None: all 1.0). Returns (new_raw, stats); stats['block_kinds'] says what happened to each block, "
          "stats['col_sq_err'] / ['row_sq_err'] hold the squared error against the exactly scaled values per column "
          "/ row (and '_sq_ref' their squares), stats['source_nonfinite'] counts source values that are not finite. "
          "refit=False: requantized blocks are always ggml's reference quantization (benchmarks).");
    m.def("string_array_end", &string_array_end_py, py::arg("buffer"), py::arg("pos"), py::arg("count"),
          "Offset just past `count` GGUF strings (u64 length + bytes each) starting at `pos`; -1 if truncated.");
    m.def("block_info", &block_info, py::arg("type"), "(values per block, bytes per block) of a ggml type.");
    m.def("pack_codes", &pack_codes, py::arg("raw"), py::arg("type"), py::arg("n_per_row"), py::arg("codes"),
          "The blocks of a quantized [rows, n_per_row] tensor with their codes (the integers each value is stored "
          "as, int32 [rows, n_per_row], within code_range(type)) replaced and their scale fields kept.");
    m.def("code_range", [](int32_t type) {
        const TypeTraits& t = require_type(type);
        return py::make_tuple(t.code_min, t.code_max);
    }, py::arg("type"), "(lowest, highest) code of a quantized ggml type; within a sub-block, value = a * code + b.");
    m.def("supported", [](int32_t type) { return traits_for(type) != nullptr; }, py::arg("type"));
    py::register_exception<std::invalid_argument>(m, "FoldError", PyExc_ValueError);
}
