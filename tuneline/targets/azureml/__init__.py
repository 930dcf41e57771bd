"""Azure ML: the compiler of pipeline jobs, components, compute and schedules (compiler), submission with
preemption resubmission (submit) and the target object the rest of tuneline uses (target)."""
