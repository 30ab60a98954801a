"""Worked examples that use libraries the pipeline does not depend on (see each module)."""
