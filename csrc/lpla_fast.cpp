// Schemas of the lpla_fast ops and the Python module stub.
//
// Each op is declared once here; kernels register per backend in csrc/cpu/ and
// csrc/cuda/, and the dispatcher picks one by the inputs' device. The Python
// module `lpla_fast._C` is empty: importing it only runs these registrations.

#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(lpla_fast, m) {
  // Lp-norm over the last dim: x (..., D) -> (...), fp32 (fp64 for fp64 input).
  m.def("lp_norm(Tensor x, float p) -> Tensor");
  // Global average pool of fmap (N, C, H, W) and the Lp-norm of the pooled vector, in
  // one pass. pooled is (N, C) when return_pooled is set, else an empty (0,) tensor.
  m.def("pooled_lp_norm(Tensor fmap, float p, bool return_pooled) -> (Tensor pooled, Tensor norms)");
  // LpLA: per-view statistic s = ||z||_p (log s when log_space) of views (N, K, D) and
  // the per-sample score sum_k [log N(s_k; mean_in, std_in^2) - log N(s_k; mean_out, std_out^2)].
  m.def(
      "lpla_score(Tensor views, float p, float mean_in, float std_in, float mean_out, "
      "float std_out, bool log_space) -> (Tensor norms, Tensor scores)");
  // EncoderMI features: pairwise cosine similarities of each sample's K views (N, K, D)
  // -> (N, K*(K-1)/2), upper triangle in row-major order.
  m.def("view_cosine(Tensor views) -> Tensor");
  // The fused tail of a pooled encoder: fmap (N*K, C, H, W) holds the last feature maps of
  // K = num_views views per sample (sample-major). Pools each view, takes its Lp-norm and
  // scores each sample as lpla_score does: pooled (N*K, C) (or an empty (0,) tensor unless
  // return_pooled), norms (N, K), scores (N,).
  m.def(
      "pooled_lpla_score(Tensor fmap, int num_views, float p, float mean_in, float std_in, float mean_out, "
      "float std_out, bool log_space, bool return_pooled) -> (Tensor pooled, Tensor norms, Tensor scores)");
  // Per-sample view statistics of views (N, K, D): the view norms s_k = ||z_k||_p (N, K), the
  // mean and sample std (ddof=1, 0 for K = 1) over k of t_k = s_k (log s_k when log_space),
  // and the Lp-norm of the view-mean embedding ||mean_k z_k||_p (N,).
  m.def(
      "view_norm_stats(Tensor views, float p, bool log_space) -> "
      "(Tensor norms, Tensor mean, Tensor std, Tensor mean_view_norm)");
}
