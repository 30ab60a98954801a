"""Market data: ingest closed candles, validate them, backfill history."""
