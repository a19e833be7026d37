#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build the extension in place against the installed torch,
# check the CUDA kernels against the float64 reference, run the CUDA op tests, the CUDA
# benchmarks and the `lpla score --device cuda` job benchmark. Needs torch and a CUDA toolkit;
# pytest, hypothesis, pytest-benchmark and pyarrow are used when installed. Results go to
# $OUT (default: ${TMPDIR:-/tmp}/lpla_gpu_check).
#
#   scripts/gpu_check.sh            # TORCH_CUDA_ARCH_LIST defaults to 9.0 (H100/H200)
#   STEPS="bench score" scripts/gpu_check.sh   # a subset of: reference tests bench score images audit
set -uo pipefail
set -x
cd "$(dirname "$0")/.."
OUT="${OUT:-${TMPDIR:-/tmp}/lpla_gpu_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" LPLA_FORCE_CUDA=1
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS=" ${STEPS:-reference tests bench score images audit} "
step() { [[ "$STEPS" == *" $1 "* ]]; }
status=0
stamp() { echo "[gpu_check] $(date -u +%H:%M:%S) +$((SECONDS))s: $*" | tee -a "$OUT/summary.txt"; }

nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
"$PY" -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0))" \
  | tee "$OUT/env.txt"

stamp "build start"
if ! "$PY" setup.py build_ext --inplace >"$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  stamp "BUILD FAILED"
  exit 1
fi
stamp "build done"

# 1. Self-contained check against the float64 reference (needs only torch).
if step reference; then
"$PY" - <<'EOF' 2>&1 | tee "$OUT/reference_check.txt"
import math, os, torch, lpla_fast
from lpla_fast import reference as ref
dev = os.environ.get("CHECK_DEVICE", "cuda")
for op in ("lp_norm", "pooled_lp_norm", "lpla_score", "view_cosine", "view_norm_stats", "pooled_lpla_score"):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"lpla_fast::{op}", "CUDA"), op
torch.manual_seed(0)
fails, count = [], 0
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-5, torch.bfloat16: 2e-5}

def close(name, got, want, dtype, atol=1e-30):
    global count
    count += 1
    want = want.to(got.dtype).cpu()
    got = got.cpu()
    ok = got.shape == want.shape and torch.allclose(got, want, rtol=RTOL[dtype], atol=atol, equal_nan=True)
    if not ok:
        fails.append(name)
        print("FAIL", name, got.flatten()[:6].tolist(), want.flatten()[:6].tolist())

def cases_rows(dtype):
    for n, d in [(0, 5), (3, 0), (1, 1), (7, 3), (33, 7), (40, 128), (9, 129), (5, 1000), (3, 5000), (2, 70000)]:
        yield f"{n}x{d}", torch.randn(n, d, dtype=dtype) * 3
    x = torch.randn(6, 40, 33, dtype=dtype)
    yield "transposed", x.transpose(1, 2)
    yield "offset", torch.randn(5 * 131 + 1, dtype=dtype)[1:].view(5, 131)
    yield "sliced", torch.randn(9, 300, dtype=dtype)[:, 3:259]
    yield "3d", torch.randn(4, 5, 64, dtype=dtype)
    yield "1d", torch.randn(77, dtype=dtype)
    big = 1e300 if dtype == torch.float64 else (1e30 if dtype != torch.float16 else 3e4)
    small = 1e-300 if dtype == torch.float64 else (1e-30 if dtype != torch.float16 else 1e-3)
    yield "huge", torch.randn(4, 200, dtype=dtype) * big
    yield "tiny", (torch.randn(4, 200, dtype=torch.float64) * small).to(dtype)
    if dtype == torch.float32:
        yield "subnormal", torch.full((2, 40), 1e-40, dtype=dtype)
    x = torch.randn(5, 50, dtype=dtype)
    x[1, 3], x[2, 7], x[3, 1], x[3, 2], x[4] = math.nan, math.inf, math.inf, math.nan, 0
    yield "nan_inf_zero", x

for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
    for p in (0.5, 1, 1.5, 2, 3, 4, 7, math.inf):
        for name, x in cases_rows(dtype):
            close(f"lp_norm {dtype} p={p} {name}", lpla_fast.lp_norm(x.to(dev), p), ref.lp_norm(x, p), dtype)
        for k, d in [(0, 8), (1, 16), (4, 128), (3, 5000)]:
            v = torch.rand(6, k, d, dtype=dtype) + 0.1
            for log_space in (False, True):
                a = (p, 1.0, 0.5, 2.0, 1.5, log_space)
                got = lpla_fast.lpla_score(v.to(dev), *a)
                want = ref.lpla_score(v, *a)
                close(f"lpla_score norms {dtype} p={p} k={k} d={d} log={log_space}", got[0], want[0], dtype)
                close(f"lpla_score scores {dtype} p={p} k={k} d={d} log={log_space}", got[1], want[1], dtype,
                      atol=RTOL[dtype] * 10)
            for log_space in (False, True):
                got = lpla_fast.view_norm_stats(v.to(dev), p, log_space)
                want = ref.view_norm_stats(v, p, log_space)
                for name, g, w in zip(("norms", "mean", "std", "mean_view_norm"), got, want):
                    close(f"view_norm_stats {name} {dtype} p={p} k={k} d={d} log={log_space}", g, w, dtype,
                          atol=RTOL[dtype] * 10 if name == "std" else 1e-30)
        v = torch.rand(3, 2, 16, dtype=dtype)
        v[0, 1, 0], v[1, 0] = math.nan, 0
        got = lpla_fast.lpla_score(v.to(dev), p, 1.0, 0.5, 2.0, 1.5, True)
        close(f"lpla_score nan/zero {dtype} p={p}", got[1], ref.lpla_score(v, p, 1.0, 0.5, 2.0, 1.5, True)[1], dtype)
        for shape in [(0, 4, 3, 3), (2, 0, 3, 3), (3, 5, 0, 2), (2, 7, 1, 1), (3, 64, 7, 7), (2, 9, 33, 31)]:
            f = torch.randn(*shape, dtype=dtype)
            for layout, g in [("nchw", f), ("cl", f.contiguous(memory_format=torch.channels_last)),
                              ("strided", f.transpose(2, 3))]:
                pooled, norms = lpla_fast.pooled_lp_norm(g.to(dev), p)
                rp, rn = ref.pooled_lp_norm(g, p)
                close(f"pooled {dtype} p={p} {shape} {layout}", pooled, rp, dtype)
                close(f"pooled norms {dtype} p={p} {shape} {layout}", norms, rn, dtype)
                k = 1 if shape[0] % 2 else 2
                a = (k, p, 1.0, 0.5, 2.0, 1.5, True)
                got, want = lpla_fast.pooled_lpla_score(g.to(dev), *a), ref.pooled_lpla_score(g, *a)
                close(f"pooled_lpla_score norms {dtype} p={p} {shape} {layout}", got[1], want[1], dtype)
                close(f"pooled_lpla_score scores {dtype} p={p} {shape} {layout}", got[2], want[2], dtype,
                      atol=RTOL[dtype] * 10)
    for k, d in [(0, 4), (1, 4), (2, 1), (5, 128), (3, 131), (8, 3000)]:
        v = torch.randn(4, k, d, dtype=dtype)
        if k >= 3 and d >= 2:
            v[1, 0], v[2, 1, 1] = 0, math.nan
        close(f"view_cosine {dtype} k={k} d={d}", lpla_fast.view_cosine(v.to(dev)), ref.view_cosine(v), dtype, RTOL[dtype])
    v = torch.randn(3, 4, 80, dtype=dtype).transpose(0, 1)
    close(f"view_cosine {dtype} strided", lpla_fast.view_cosine(v.to(dev)), ref.view_cosine(v), dtype, RTOL[dtype])
# Errors carry the same messages as the CPU kernels.
for bad, msg in [(lambda: lpla_fast.lp_norm(torch.ones(3, device=dev), -1.0), "p must be"),
                 (lambda: torch.ops.lpla_fast.lp_norm(torch.ones(3, dtype=torch.int32, device=dev), 2.0), "must be float32"),
                 (lambda: lpla_fast.lpla_score(torch.ones(2, 3, device=dev), 2, 0, 1, 0, 1), "views must be 3-D"),
                 (lambda: lpla_fast.lpla_score(torch.ones(2, 3, 4, device=dev), 2, 0, 0.0, 0, 1), "std_in must be")]:
    try:
        bad()
        fails.append(f"no error: {msg}")
    except (RuntimeError, ValueError) as e:
        if msg not in str(e):
            fails.append(f"wrong error {e!r}, want {msg}")
print(f"reference check: {count - len(fails)}/{count} passed")
raise SystemExit(1 if fails else 0)
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
stamp "reference check done (status=$status)"
fi

# 2. The project's op tests, CUDA cases.
if step tests && "$PY" -c "import pytest" 2>/dev/null && [ -f tests/test_ops.py ]; then
  "$PY" -m pytest tests/test_ops.py -k cuda -q -rf -p no:cacheprovider --junitxml="$OUT/test_ops_cuda.xml" \
    2>&1 | tail -40 | tee "$OUT/test_ops_cuda.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  stamp "pytest tests/test_ops.py -k cuda done (status=$status)"
fi

# 3. Benchmarks: pytest-benchmark when installed, else the plain runner.
if step bench; then
  if "$PY" -c "import pytest_benchmark" 2>/dev/null; then
    "$PY" -m pytest bench/bench_cuda.py --benchmark-only -q -p no:cacheprovider \
      --benchmark-json="$OUT/bench_cuda.json" --benchmark-columns=median,min,max 2>&1 | tail -60 | tee "$OUT/bench_cuda.txt"
  else
    "$PY" bench/bench_cuda.py "$OUT/bench_cuda_plain.json" 2>&1 | tee "$OUT/bench_cuda.txt"
  fi
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  stamp "benchmarks done (status=$status)"
fi

# 4. The streaming job on the GPU (pinned buffers, non-blocking copies) against reading the
#    shards and the kernel alone: the measured input of the one-H200 projection for 1e9 rows.
if step score && "$PY" -c "import pytest_benchmark, pyarrow" 2>/dev/null; then
  LPLA_BENCH_SCORE_DEVICE=cuda LPLA_BENCH_SCORE_GB="${LPLA_BENCH_SCORE_GB:-4}" \
    "$PY" -m pytest bench/bench_score.py --benchmark-only -s -q -p no:cacheprovider -k "not rss" \
    --benchmark-json="$OUT/bench_score_cuda.json" --benchmark-columns=median,min,max 2>&1 | tail -30 | tee "$OUT/bench_score_cuda.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  stamp "score job benchmark done (status=$status)"
fi

# 5. The image job on the GPU (views pinned by the DataLoader, fused tail) against the forward
#    pass alone and the plain torch pipeline.
if step images && "$PY" -c "import pytest_benchmark, pyarrow, PIL" 2>/dev/null; then
  LPLA_BENCH_IMAGES_DEVICE=cuda \
    "$PY" -m pytest bench/bench_images.py --benchmark-only -s -q -p no:cacheprovider -k "not rss" \
    --benchmark-json="$OUT/bench_images_cuda.json" --benchmark-columns=median,min,max 2>&1 | tail -30 | tee "$OUT/bench_images_cuda.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  stamp "image job benchmark done (status=$status)"
fi

# 6. A short `lpla audit` on the GPU: a torchvision ResNet-18 with random weights (saved to
#    safetensors, as a user's weights would be), the digits exported as image folders, two
#    references trained on the GPU (bf16 autocast, channels-last) for one epoch, LiRA and RMIA.
if step audit && "$PY" -c "import pyarrow, PIL, torchvision" 2>/dev/null; then
  rm -rf "$OUT/audit" "$OUT/audit_images"
  "$PY" -m lpla_fast export-images --out "$OUT/audit_images" --no-progress \
    && "$PY" -c "import sys, torchvision; from safetensors.torch import save_file; m = torchvision.models.resnet18(); save_file({k: v.contiguous() for k, v in m.state_dict().items()}, sys.argv[1])" "$OUT/r18.safetensors" \
    && "$PY" -m lpla_fast audit --encoder torchvision:resnet18 --weights "$OUT/r18.safetensors" --image-size 32 \
      --members "$OUT/audit_images/members" --nonmembers "$OUT/audit_images/nonmembers" \
      --population "$OUT/audit_images/reference" --device cuda --train-references 2 --epochs 1 --K 4 \
      --bootstrap 200 --out "$OUT/audit" 2>&1 | tail -40 | tee "$OUT/audit.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] && [ -f "$OUT/audit/plots/exposed.png" ] || status=1
  stamp "audit on cuda done (status=$status)"
fi
exit $status
