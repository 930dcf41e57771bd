"""Operations over time: retraining triggers, cost and time estimates, and the served traffic's feedback export.

This layer may use everything below it (the pipeline language, the graph, the targets, the LLM library); nothing
in tuneline imports it but the command line.
"""
