"""The local runner: executes each step's own command line as a subprocess, in topological order."""
