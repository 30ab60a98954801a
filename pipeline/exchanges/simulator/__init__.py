"""A local exchange that speaks Binance's spot REST dialect over recorded candles.

ccxt's own `binance` class talks to it unchanged; only the API base URL differs.
Started with `python -m pipeline simulator`; see `app.create_app` for the options.
"""
