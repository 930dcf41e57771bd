"""register: log a gated model to MLflow as a pyfunc, register a version, set aliases (see ``__main__``)."""
