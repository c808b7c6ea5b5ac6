"""Training-time methods, one module each: `make(...) -> Objective` (see `base`)."""
