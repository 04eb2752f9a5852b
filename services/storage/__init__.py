"""PostgreSQL storage: the connection pool, ordered SQL migrations and the TimescaleDB path."""
