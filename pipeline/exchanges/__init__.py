"""Exchanges: the ccxt client factory (`factory`), the one adapter that translates ccxt
errors (`translation`), request pacing (`pacing`), the client with its retries (`client`),
and the exchange simulator (`simulator/`)."""
