"""Development tooling that is not shipped in the wheel: the conformance harnesses (tools.conformance)."""
