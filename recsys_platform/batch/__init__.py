"""Batch lists: scoring user shards with the champion, the business rules, the recommendation-set config
and its JSON-lines export."""
