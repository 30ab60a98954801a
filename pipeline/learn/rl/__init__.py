"""Reinforcement learning: the vectorized trading environment, DQN and A2C.

Importing this package imports nothing heavy; each module imports TensorFlow itself.
"""
