"""The `tuneline` command: main (validate, run, runs, logs, completion), compile (compile, submit), start (init,
components, models), ops (trigger, feedback, cost) and errors (what to do next when a platform is unreachable or
not signed in). The top layer: it wires the engine, the targets and operations together, and nothing imports it.
"""
