"""Formatting results (tables, plots, SER reports); no training."""
