"""PyTorch reference implementations for parity tests and speed benchmarks (not installed)."""
