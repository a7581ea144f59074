"""Lacquer serving."""
