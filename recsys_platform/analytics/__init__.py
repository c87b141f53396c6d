"""What people read: the DuckDB analyst catalog over the lake, frame previews for asset metadata, the
CLI's end-of-run summary."""
