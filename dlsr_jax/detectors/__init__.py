"""Post-hoc OOD detectors, one module each (higher score = more OOD)."""
