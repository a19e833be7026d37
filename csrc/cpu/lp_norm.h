// CPU kernels of lp_norm and lpla_score (the CPU side of csrc/cuda/lp_norm.cu).
// Part of kernels_impl.h, included inside its per-instruction-set namespace (no includes here).
#pragma once

namespace {

template <class T>
void lp_norm_rows(const at::Tensor& x, double p, at::Tensor& out) {
  const RowLayout rows(x);
  const NormSpec spec(p);
  const T* base = x.const_data_ptr<T>();
  auto* dst = out.mutable_data_ptr<result_t<T>>();
  at::parallel_for(0, rows.count, grain_rows(rows.length), [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    for (int64_t r = begin; r < end; ++r) {
      const T* row = contiguous_row(base + rows.offset(r), rows.length, rows.step, buffer);
      dst[r] = static_cast<result_t<T>>(row_norm(row, rows.length, spec));
    }
  });
}

}  // namespace

at::Tensor lp_norm(const at::Tensor& x, double p) {
  const auto out_dtype = result_dtype(x);
  auto out = at::empty(x.sizes().slice(0, x.dim() - 1), x.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  if (x.size(-1) == 0) return out.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lp_norm_cpu",
                                  [&] { lp_norm_rows<scalar_t>(x, p, out); });
  return out;
}

namespace {

// The scores of samples n in [0, count) from their K view norms s (count x K, double):
// norm_dst gets the norms in the result type R, score_dst[n] = sum_k llr(t_nk).
template <class R>
void score_norms(const double* s, int64_t count, int64_t K, const GaussianLogRatio& llr, bool log_space,
                 R* norm_dst, R* score_dst) {
  for (int64_t n = 0; n < count; ++n) {
    double total = 0.0;
    for (int64_t k = 0; k < K; ++k, ++s) {
      norm_dst[n * K + k] = static_cast<R>(*s);
      total += llr(view_statistic(*s, log_space));
    }
    score_dst[n] = static_cast<R>(total);
  }
}

template <class T>
void score_rows(const at::Tensor& views, const NormSpec& spec, const GaussianLogRatio& llr, bool log_space,
                at::Tensor& norms, at::Tensor& scores) {
  const int64_t N = views.size(0), K = views.size(1), D = views.size(2);
  const int64_t sN = views.stride(0), sK = views.stride(1), sD = views.stride(2);
  const T* base = views.const_data_ptr<T>();
  auto* norm_dst = norms.mutable_data_ptr<result_t<T>>();
  auto* score_dst = scores.mutable_data_ptr<result_t<T>>();
  // Norms of a block of samples first, then their scores: the log and the Gaussian terms
  // stay out of the streaming loop, which then keeps as many reads in flight as lp_norm's.
  constexpr int64_t kSamplesPerBlock = 64;
  at::parallel_for(0, N, grain_rows(K * D), [&](int64_t begin, int64_t end) {
    std::vector<T> buffer;
    std::vector<double> block_norms(kSamplesPerBlock * K);
    for (int64_t first = begin; first < end; first += kSamplesPerBlock) {
      const int64_t last = std::min(end, first + kSamplesPerBlock);
      double* s = block_norms.data();
      for (int64_t n = first; n < last; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const T* row = contiguous_row(base + n * sN + k * sK, D, sD, buffer);
          *s++ = D == 0 ? 0.0 : row_norm(row, D, spec);
        }
      score_norms(block_norms.data(), last - first, K, llr, log_space, norm_dst + first * K, score_dst + first);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> lpla_score(const at::Tensor& views, double p, double mean_in, double std_in,
                                              double mean_out, double std_out, bool log_space) {
  const auto out_dtype = result_dtype(views);
  const auto opts = views.options().dtype(out_dtype);
  auto norms = at::empty({views.size(0), views.size(1)}, opts);
  auto scores = at::empty({views.size(0)}, opts);
  if (views.size(0) == 0) return {norms, scores};
  const auto llr = GaussianLogRatio::make(mean_in, std_in, mean_out, std_out);
  const NormSpec spec(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, views.scalar_type(), "lpla_score_cpu",
                                  [&] { score_rows<scalar_t>(views, spec, llr, log_space, norms, scores); });
  return {norms, scores};
}
