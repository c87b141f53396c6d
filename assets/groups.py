"""The asset groups of the UI, in data-flow order: each asset names one, and jobs select by them
(`orchestration/jobs.py`)."""

INGESTION = "ingestion"
FEATURES = "features"
TRAINING = "training"
SERVING = "serving"
EXPERIMENTS = "experiments"
LIFECYCLE = "lifecycle"

ALL_GROUPS = (INGESTION, FEATURES, TRAINING, SERVING, EXPERIMENTS, LIFECYCLE)
