"""`recsys benchmark quality`: real-data quality measured through the product (holdout splits, reference
baselines, import + train + serve per split)."""
