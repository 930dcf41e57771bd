"""MLflow model URIs as pipelines write them: `models:/<name>/<version>` or `models:/<name>@<alias>`.

Parsed here, below every executor, because whether a step may be cached depends on it (tuneline.graph): a URI
whose version the registry picks when it is read can point elsewhere by the next run.
"""

from __future__ import annotations


def parse_models_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/name/3`` -> (name, "3", None); ``models:/name@champion`` -> (name, None, "champion")."""
    if not uri.startswith("models:/"):
        raise ValueError(f"model URI {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    body = uri[len("models:/") :].strip("/")
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        if name and alias:
            return name, None, alias
    elif "/" in body:
        name, version = body.rsplit("/", 1)
        if name and version.isdigit():
            return name, version, None
    raise ValueError(f"model URI {uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")


def is_moving_reference(uri: str) -> bool:
    """A model URI whose version is picked when it is read: an alias (`models:/name@champion`), or `latest` or a
    stage name in place of a version. A numbered version (`models:/name/3`) and anything that is not a `models:/`
    URI are not."""
    if not uri.startswith("models:/"):
        return False
    try:
        _name, _version, alias = parse_models_uri(uri)
    except ValueError:
        return True  # models:/name/latest, models:/name/Production: resolved at read time as well
    return alias is not None
