"""Evaluation of OOD scores: `metrics` (AUROC, AUPR, FPR95), `table` (the results schema),
`report` (JSON / CSV / Markdown files) and `plots` (figures)."""
