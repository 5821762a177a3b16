"""hagview viewer (PyQt6)."""
