"""The Dagster shell around the core: the jobs, the one `Definitions` root and the in-process job runner
the CLI uses. It merges the top-level `assets/`, `resources/` and `sensors/` packages; the core package
`recsys_platform` never imports any of them (tests/test_architecture.py)."""
