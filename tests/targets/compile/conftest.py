import os

import pytest
from readback import TOY, TOY_MULTINODE

from tuneline.targets.build import TARGETS, compile_file
from tuneline.targets.options import CompileOptions

# The compiled Azure ML jobs must validate as `az ml job create` users validate them: no private-preview flag.
assert "AZURE_ML_CLI_PRIVATE_FEATURES_ENABLED" not in os.environ


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """Both fixture pipelines compiled for both targets once: {stem: folder}."""
    out = tmp_path_factory.mktemp("compiled")
    return {path.stem: compile_file(path, TARGETS, out, CompileOptions()).folder for path in (TOY, TOY_MULTINODE)}
