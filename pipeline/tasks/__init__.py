"""One function per DAG task and CLI command.

Each takes the Settings and plain values, returns a plain JSON-able dict (or list, or
id), and owns what it opens: the engine is created once and disposed when it returns.
DAG files and `pipeline/cli/` only parse their inputs and call these; the work lives
in the stage packages (data, learn, models, arbitrage, ops). Importing a module here is
light, so DAG files may import one at parse time.
"""
