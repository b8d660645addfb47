"""Guest-side programs and measurements for the peer comparison (issue 12)."""
