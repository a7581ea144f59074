"""Lacquer actors."""
