"""A/B/n experiments on recommendation sets: bucketing, exposures and the per-arm analysis."""
