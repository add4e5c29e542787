"""Definitions shared by training and serving."""
