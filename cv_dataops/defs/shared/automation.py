"""Declarative Automation for the assets that span all batches, evaluated by a sensor that runs by default
(Dagster's own default automation sensor starts stopped)."""

import dagster as dg

automation_sensor = dg.AutomationConditionSensorDefinition(
    "automation_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)
