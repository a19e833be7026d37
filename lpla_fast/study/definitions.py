"""The report's Definitions section: what every number in it means (ours where the paper is silent)."""

DEFINITIONS = """\
## Definitions (ours where the paper is silent)

The paper ("When Better Features Mean Greater Risks", ASIA CCS 2025) is known here only from its
abstract: LpLA infers membership from the distribution of the p-norm of feature vectors, without
labels or gradients. Everything more specific is our own definition, and each choice is a parameter:

- **Query**: the attacker sends K views of a sample (view 1 the unaugmented image, the others
  random augmentations of the training policy) and receives K embeddings z_1..z_K, either the
  backbone output (the released representation) or the projection-head output.
- **LpLA (ours)**: statistics of the view norms log ||z_k||_p, standardized with the same encoder's
  reference non-members; Gaussian member and non-member densities fitted on labelled data (the shadow
  encoder's members and non-members, or the audit calibration sets). The default (`auto`, which is
  `joint`) models each sample's vector of norm level, spread, resultant length ||mean_k z_k||_p /
  mean_k ||z_k||_p and level at the other p with one shared covariance: score log N_in - log N_out,
  linear in the vector. The other characteristics: `view` (sum over the K views of
  log p_in(t_k) - log p_out(t_k)), `mean_spread`, `resultant`, `multi_p`; `select` picks one by
  cross-validation on the labelled data, `budget` is the earlier fixed choice. With reference
  non-members only, the score is two-sided (distance from the non-members' centre).
- **Norm threshold**: the mean view norm alone (an ablation of LpLA), direction and threshold learned.
- **EncoderMI** (Liu et al., CCS 2021): the pairwise cosine similarities of the K views; -T thresholds
  their mean, -V is an MLP on the sorted vector, -S a DeepSets classifier; trained on labelled data.
  It needs K >= 2.
- **kNN (FAISS)**: similarity of the view-mean embedding to its k nearest neighbours in a bank
  (reference non-members at the shadow level; the known training samples at the audit level), its
  direction learned on labelled data.
- **Global and reference-calibrated attacks**: the attacks above apply one threshold to every
  sample. LiRA (Carlini et al., 2022) and RMIA (Zarifzadeh et al., 2024) calibrate each sample
  against reference encoders trained on random halves of a candidate pool holding the target's
  members and non-members. "LiRA-online (s)": per-sample Gaussians of statistic s from the references
  trained with and without the sample; "-offline": only those without it, a one-sided test. RMIA: a
  likelihood ratio against population samples, normalized by the references. Statistic s: `lpla`
  (the view norms), `encodermi` (view agreement), `knn`, or an LpLA characteristic.
- **LpLA family**: LpLA, the norm threshold, and LiRA / RMIA over a norm statistic; the baselines are
  EncoderMI, kNN, and LiRA / RMIA over their statistics.
- **Knowledge levels**: `reference` (known non-members queried on the target), `shadow` (shadow
  encoders of the same recipe trained on disjoint data: a complementary pair, one on each shadow
  split, whose labelled samples are pooled, each standardized with its own encoder's reference),
  `audit` (the auditor knows the training set).
  The audit level halves the target's members and non-members (seeded): it calibrates on the first
  halves and is evaluated on the second halves. The knowledge sweep evaluates every level on those
  same second halves, so its numbers are comparable across levels but differ from the main table.
- **Metrics**: ROC AUC (ties count one half); TPR at a target FPR = the largest TPR whose FPR is <= the
  target (step interpolation, conservative: with fewer than 1/FPR non-members it is the TPR before the
  first false positive). TPR at 1% and 0.1% FPR are the headline columns: an attack that is useful
  to an adversary finds some members with almost no false alarms.
- **Low-FPR numbers need negatives**: TPR at FPR α is reported only when the evaluated set holds at
  least ⌈10/α⌉ non-members (1,000 for 1 %, 10,000 for 0.1 %), so that the threshold rests on ten
  false positives or more; otherwise the cell shows "—" and the count. The reference-calibrated
  attacks' scores are comparable across targets, so their low-FPR numbers are also given **pooled**:
  every seed's target in one evaluated set (labelled pooled, apart from the per-target means). ROC
  curves are drawn down to FPR = 1/n only (n the curve's non-members).
- **Paired comparisons**: every claim is a difference a − b of AUC. Two attacks are *paired* when they
  scored the same target encoders on the same samples (same seed, same evaluated members and
  non-members). Per seed the difference gets DeLong's variance for correlated ROC curves (DeLong et
  al. 1988; computed from midranks in O(n log n), Sun & Xu 2014); across seeds, a *paired
  hierarchical bootstrap*: resample the seeds, then within each chosen seed one resample of its
  members and non-members, the same for both attacks, and average the differences. Comparisons of
  different encoders (the architecture ladder, training-time defenses) are *unpaired*: each side's
  seed mean is bootstrapped on its own (seeds, then samples) and the replicates subtracted. The
  bootstrap's interval and p-value read its replicates as a normal distribution (estimate ± 1.96
  standard errors). The p-values are Holm-adjusted over every comparison of the report. Verdict:
  significant after Holm at 5 % ("wins"/"losses"; for a defense "leaks less"/"more"); else a **tie**
  when the whole 95 % interval lies within ±0.02; else **undecided**.
- **Power**: the mean over S seeds of paired differences has variance (between + within(n)) / S,
  within(n) the per-seed DeLong variance of a difference at n members and n non-members (it falls as
  1/n) and between the variance of the seeds' true differences (the spread of the per-seed
  differences beyond within, at least 0), both averaged over the run's paired attack comparisons. A
  two-sided test at α = 0.05 detects a difference Δ with 80 % power when
  (z₀.₉₇₅ + z₀.₈) · √((between + within(n)) / S) ≤ Δ, i.e. S ≥ 7.85 (between + within(n)) / Δ². The
  report states the Δ its own sizes detect, and sizes that reach Δ = 0.02 (before the Holm
  adjustment, which asks for more).
- **Empirical ε** (DP-SGD encoders): for every threshold of the strongest attack, Clopper–Pearson 95 %
  bounds on its TPR and FPR; (ε, δ)-DP implies TPR ≤ e^ε FPR + δ and 1 − FPR ≤ e^ε (1 − TPR) + δ,
  so ε ≥ max(log((TPR_lo − δ) / FPR_hi), log((1 − FPR_hi − δ) / (1 − TPR_lo))), δ = 10⁻⁵, the
  largest over thresholds (as DP auditing does). It is a lower bound beside the accountant's upper
  bound, and a small sample caps it: even a perfect attack proves only ε ≈ 3.5 with 128 members
  and 128 non-members.
- **Seeds and intervals**: every configuration is trained with several seeds, each drawing its own
  members and training randomness. A cell is the mean over seeds; its 95% interval comes from a
  hierarchical bootstrap: resample the seeds, then within each chosen seed resample its members and
  non-members (separately), and average. Where the per-sample scores were not kept it resamples the
  seeds' values only; each table says which.
- **Feature quality**: linear-probe (logistic regression on frozen, standardized features) and
  cosine-kNN accuracy on a labelled probe split disjoint from all others.
- **Trade-off**: Spearman rank correlation between linear-probe (or kNN) accuracy and an attack's
  AUC (or TPR at 1% FPR) over every (encoder, seed) point, across frameworks and architectures, and
  along each axis alone. Points are few: read ρ with its p-value.
- **Defenses**: applied at release (to the embeddings the attacker receives: L2 normalization, noise,
  quantization, truncation) or at training (weight decay, fewer epochs, more members, DP-SGD); each
  is shown with the probe accuracy of the defended encoder, the utility it costs.
"""
