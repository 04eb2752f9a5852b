"""Vigil's domain model. It imports nothing else of the project (see docs/architecture.md)."""
