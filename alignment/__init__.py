"""tempa.alignment."""
