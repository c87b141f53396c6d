"""Serving: the two-slot online store, the snapshot written into it, blue-green deployment, the read path
and the HTTP APIs (recommendations, events)."""
