"""The arq worker that moves sales from the Redis stream into PostgreSQL."""
