# The triggers' copy of the fixture project: the retrain-check job is written for one of its pipelines.
from tests.ops.triggers.conftest import ops_cli, project  # noqa: F401
