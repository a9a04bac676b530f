from workflows.apply import ApplyWorkflow
from workflows.module_lock import ModuleLockWorkflow

ALL_WORKFLOWS = [ApplyWorkflow, ModuleLockWorkflow]

__all__ = ["ALL_WORKFLOWS", "ApplyWorkflow", "ModuleLockWorkflow"]
