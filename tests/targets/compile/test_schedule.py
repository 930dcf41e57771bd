import pytest

from tuneline.spec.models import Schedule
from tuneline.targets import CompileError
from tuneline.targets.azureml.schedule import azureml_schedule
from tuneline.targets.kfp.schedule import kfp_cron, kfp_recurring_run


def test_utc_cron_gains_a_seconds_field():
    assert kfp_cron(Schedule(cron="0 3 * * 1")) == ("0 0 3 * * 1", None)


def test_non_utc_schedule_is_shifted_to_utc_with_a_note():
    cron, note = kfp_cron(Schedule(cron="15 4,9 * * *", timezone="Europe/Paris"))
    assert cron == "0 15 3,8 * * *"
    assert "UTC+1" in note


def test_shift_across_midnight_on_a_weekday_is_refused():
    with pytest.raises(CompileError, match="another day"):
        kfp_cron(Schedule(cron="0 0 * * 1", timezone="Europe/Paris"))
    with pytest.raises(CompileError, match="write the schedule in UTC"):
        kfp_cron(Schedule(cron="0 */2 * * *", timezone="Europe/Paris"))


def test_recurring_run_and_azureml_schedule():
    run = kfp_recurring_run(Schedule(cron="0 3 * * 1"), "demo", no_cache=True)
    assert run.to_dict()["cron_expression"] == "0 0 3 * * 1" and run.enable_caching is False
    data = azureml_schedule(Schedule(cron="0 3 * * 1", timezone="America/New_York"), "demo", "./pipeline_job.yml")
    assert data["trigger"] == {"type": "cron", "expression": "0 3 * * 1", "time_zone": "Eastern Standard Time"}
    assert data["create_job"] == "./pipeline_job.yml"
    with pytest.raises(CompileError, match="no Azure ML equivalent"):
        azureml_schedule(Schedule(cron="0 3 * * 1", timezone="Africa/Nairobi"), "demo", "./pipeline_job.yml")
