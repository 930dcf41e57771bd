"""Machine-learning helpers shared by the train, evaluate, register and deploy components.

Modules: ``models`` (base-model catalog and loading), ``chat`` (chat template, assistant-only labels),
``data`` (JSONL splits), ``batching`` (deterministic batch plans), ``checkpoint`` (atomic spot-safe
checkpoints), ``tracking`` (MLflow), ``metrics`` (text and JSON metrics), ``gates`` (safe gate expressions),
``device`` (precision and memory).
"""
