"""Data helpers shared by the prepare component and the serving feedback logger.

Modules (one job each):
  jsonl      read a JSONL file as numbered byte lines (BOM, CRLF, blank lines, invalid UTF-8)
  normalize  Unicode NFC + whitespace normalisation of message text
  records    parse and validate one record (chat or prompt/completion) into a ChatRecord
  pii        typed PII / secret redaction (<EMAIL>, <CREDIT_CARD>, ...)
  minhash    vectorised MinHash signatures compatible with datasketch's "affine32" scheme
  dedup      exact and near-duplicate (MinHash LSH) detectors
  split      deterministic, group-aware train/validation/test assignment
"""
