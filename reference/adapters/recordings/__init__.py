"""Recorded and documented engine wire transcripts (see README.md) and the tools that made them."""
