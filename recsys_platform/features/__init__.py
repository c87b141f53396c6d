"""Point-in-time features from the ingested history: interactions, user/item features, similar items."""
