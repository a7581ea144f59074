"""Lacquer cluster."""
