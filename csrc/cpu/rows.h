// Row iteration over (..., D) tensors with any strides, and the parallel grain.
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

// Elements per parallel task: big enough to amortize scheduling, small enough to balance.
constexpr int64_t kGrainElements = int64_t(1) << 15;

int64_t grain_rows(int64_t row_elements) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(1, row_elements));
}

// Element offsets of the rows of a (..., D) tensor, in row-major order of the leading
// dims (coalesced where the strides allow, so the common case is one multiply).
struct RowLayout {
  int64_t count = 1;
  int64_t length = 0;
  int64_t step = 1;  // stride between the elements of a row
  std::vector<int64_t> sizes, strides;

  explicit RowLayout(const at::Tensor& x) {
    const int64_t d = x.dim();
    length = x.size(d - 1);
    step = x.stride(d - 1);
    for (int64_t i = 0; i < d - 1; ++i) {
      count *= x.size(i);
      if (x.size(i) == 1) continue;
      if (!sizes.empty() && strides.back() == x.stride(i) * x.size(i)) {
        sizes.back() *= x.size(i);
        strides.back() = x.stride(i);
      } else {
        sizes.push_back(x.size(i));
        strides.push_back(x.stride(i));
      }
    }
    if (sizes.empty()) {
      sizes.push_back(1);
      strides.push_back(0);
    }
  }

  int64_t offset(int64_t row) const {
    if (sizes.size() == 1) return row * strides[0];
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
      off += (row % sizes[d]) * strides[d];
      row /= sizes[d];
    }
    return off;
  }
};

// A contiguous copy of a strided row in `buffer`, or the row itself when contiguous.
template <class T>
inline const T* contiguous_row(const T* row, int64_t n, int64_t step, std::vector<T>& buffer) {
  if (step == 1 || n <= 1) return row;
  buffer.resize(n);
  for (int64_t i = 0; i < n; ++i) buffer[i] = row[i * step];
  return buffer.data();
}
