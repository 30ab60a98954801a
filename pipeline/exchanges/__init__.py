"""Exchanges: the ccxt client factory, the one adapter that translates ccxt errors,
request pacing, and the exchange simulator."""
