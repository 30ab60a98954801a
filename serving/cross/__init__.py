"""Cross-exchange execution: a spread between two venues traded on inventory already held
on each (no transfers), both legs at once, one-sided fills hedged or unwound in time."""
