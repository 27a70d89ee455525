"""Probing frozen encoders on labelled tasks."""
