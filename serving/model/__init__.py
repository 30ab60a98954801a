"""The model strategy (`python -m serving`, `--strategy model`): the promoted RL policy
per market, decided on every closed candle, through its risk gate, into its store."""
