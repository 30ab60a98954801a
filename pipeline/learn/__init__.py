"""Learning: features, the RL agents, training, evaluation, evidence, ONNX export."""
