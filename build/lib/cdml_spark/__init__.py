"""Collaborative Deep Metric Learning on Spark, Delta, Petastorm and PyTorch."""
