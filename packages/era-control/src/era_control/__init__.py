"""ERA for continuous control."""
