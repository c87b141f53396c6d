"""Events in: the landing zone, dataset imports, ingestion of arrival-hour partitions, data quality and
reconciliation of every landed row."""
