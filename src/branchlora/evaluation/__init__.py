"""Evaluation: scorers per metric (scorers.py); generation and the accuracy matrix live beside them."""
