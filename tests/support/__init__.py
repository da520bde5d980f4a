"""Real servers and helpers the suite starts for itself."""
