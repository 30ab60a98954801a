"""cryptobots: market data, RL training and model lifecycle for crypto trading.

Importing this package is cheap: heavy libraries (tensorflow, great_expectations,
onnx converters, ccxt) are imported inside the functions that need them.
"""

__version__ = "0.1.0"
