"""Vigil services: the domain model, storage, the reading pipeline, billing and the public API."""
