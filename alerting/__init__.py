"""The streaming rule engine: clinical rules (pure), the engine around them (I/O), alerts."""
