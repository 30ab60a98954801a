"""The arbitrage strategy (`python -m serving --strategy arbitrage`): cycles inside one
exchange, traded leg by leg under their own gate, into their own tables."""
