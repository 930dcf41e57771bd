"""The LLM library the components use: data formats and checks (data), models, chat templates, metrics,
generation and judging (ml), and the model registry (registry).

It reads no pipeline: nothing here imports the pipeline language, the graph or a target; the step contract
(`tuneline.step`) is the most it uses.
"""
