"""The step contract: what any component program gets and gives, on every target.

Typed arguments from its `component.yaml` (args), value outputs written the way every executor reads them back
(outputs), progress and summary, the content digests and the cache/resume key (digest, imports, cache), the
command template rendered to an argv (command), and the wrappers a compiled step runs inside its pod or job (gate,
resume, outdirs, fingerprint). It depends on the pipeline language (`tuneline.spec`) and nothing above it, so the
local runner, both compilers and the component programs all import it and it imports none of them.
"""
