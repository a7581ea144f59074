"""Lacquer tuning."""
