"""deploy: serve a registered version locally (Triton, blue/green) or write cluster manifests
(see ``__main__``)."""
