"""Beam building blocks (PTransforms, DoFns) over pure functions."""
