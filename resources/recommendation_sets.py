"""The recommendation-set configuration (YAML the team edits) and where batch exports go."""

from pathlib import Path

import dagster as dg

from recsys_platform.batch.set_config import SetsConfig, load_sets_config


class RecommendationSetsResource(dg.ConfigurableResource):
    """Path of the recommendation-set YAML (RECSYS_RECOMMENDATION_SETS) and the export directory."""

    config_path: str
    exports_dir: str

    def config(self) -> SetsConfig:
        """Read and validate the YAML now (edits apply on the next run)."""
        return load_sets_config(self.config_path)

    @property
    def exports(self) -> Path:
        """Directory of the JSON-lines exports."""
        return Path(self.exports_dir)
