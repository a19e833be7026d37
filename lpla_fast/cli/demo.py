"""`lpla demo`: score a synthetic (N, K, D) embedding set with the fused LpLA op and print
its throughput (rows/s, GB/s), next to the read bandwidth of the same data.

Members are drawn with slightly smaller embedding norms than non-members, so the printed
AUC also shows that the scores separate them.
"""

from __future__ import annotations

import argparse

DTYPES = ("float32", "float16", "bfloat16", "float64")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="score a synthetic embedding set with lpla_score and print its throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=50_000, help="N, samples (half members) (default: %(default)s)")
    parser.add_argument("--views", type=int, default=8, help="K, query views per sample (default: %(default)s)")
    parser.add_argument("--dim", type=int, default=512, help="D, embedding dimension (default: %(default)s)")
    parser.add_argument("--p", type=float, default=2.0, help="norm order, in (0, inf] (default: %(default)s)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="embedding dtype (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best is reported (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic views (default: %(default)s)")
    parser.set_defaults(func=run)
    return parser


def _check(args):
    for name in ("samples", "views", "dim", "repeats"):
        value = getattr(args, name)
        if value < 1:
            raise SystemExit(f"lpla demo: --{name} must be >= 1, got {value}")
    if not args.p > 0:
        raise SystemExit(f"lpla demo: --p must be in (0, inf], got {args.p}")


def run(args) -> int:
    import time

    import torch

    import lpla_fast
    from lpla_fast.testing import random_views

    _check(args)
    dtype = getattr(torch, args.dtype)
    members = args.samples // 2
    views = random_views(args.samples, args.views, args.dim, dtype=dtype, seed=args.seed)
    views[:members] *= 0.97  # members: slightly smaller norms

    # Calibrate the two Gaussians on the first half of each group, as an attack would.
    norms = lpla_fast.lp_norm(views, args.p)
    stat_in, stat_out = norms[: members // 2].double(), norms[members : members + (args.samples - members) // 2].double()
    calibration = (stat_in.mean().item(), stat_in.std().item(), stat_out.mean().item(), stat_out.std().item())

    def score():
        return lpla_fast.lpla_score(views, args.p, *calibration)

    def best_time(fn):
        fn()
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    seconds = best_time(score)
    sum_seconds = best_time(views.sum)
    _, scores = score()
    nbytes = views.numel() * views.element_size()
    rows = args.samples * args.views
    labels = torch.zeros(args.samples, dtype=torch.bool)
    labels[:members] = True

    print(f"lpla_fast {lpla_fast.__version__} | {torch.get_num_threads()} threads | CUDA kernels built: {lpla_fast.built_with_cuda()}")
    print(f"views: N={args.samples} K={args.views} D={args.dim} {args.dtype} ({nbytes / 1e9:.2f} GB), p={args.p:g}")
    print(f"lpla_score: {seconds * 1e3:.1f} ms | {rows / seconds / 1e6:.1f} M rows/s | {args.samples / seconds / 1e6:.2f} M samples/s"
          f" | {nbytes / seconds / 1e9:.1f} GB/s")
    print(f"read bandwidth (views.sum()): {nbytes / sum_seconds / 1e9:.1f} GB/s"
          f" -> lpla_score runs at {100 * sum_seconds / seconds:.0f}% of it")
    print(f"member-vs-non-member AUC of the scores: {_auc(scores.double(), labels):.3f}")
    return 0


def _auc(scores, labels) -> float:
    """Probability that a member outscores a non-member (ties count half)."""
    import torch

    ranks = torch.empty_like(scores)
    order = scores.argsort()
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # Average the ranks of tied scores.
    unique, inverse = torch.unique(scores, return_inverse=True)
    if len(unique) < len(scores):
        sums = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, ranks)
        counts = torch.zeros(len(unique), dtype=scores.dtype).index_add_(0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
