"""Helpers shared by tests and bench scripts: synthetic ticket splits and tiny random models."""
