"""Developer tools, never imported by the product: synthetic data (`generator`, `latent_tastes`), live event
streams (`simulator`), simulated experiment outcomes (`experiment_sim`) and a throwaway production-profile
deployment on loopback (`production_stack`, `loopback_s3`) that the tests and `benchmarks/scale.py` start."""
