"""hagview pipeline: sources, inference engines, tracking, sizing, smoothing and outputs."""
