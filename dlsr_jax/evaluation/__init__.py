"""Evaluation of OOD detectors: `evaluate` (every row fitted once, every set scored) and
`forward` (a net's arrays, one compilation per net) in `evaluate.py`; `metrics` (AUROC, AUPR,
FPR95), `table` (the results schema), `report` (JSON / CSV / Markdown files) and `plots`
(figures)."""

from dlsr_jax.evaluation.evaluate import Results, evaluate, fit_key, forward, set_key

__all__ = ["Results", "evaluate", "fit_key", "forward", "set_key"]
