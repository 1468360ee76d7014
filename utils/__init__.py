"""Input, output, display and evaluation helpers for VideoVisual."""
