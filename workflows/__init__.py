from workflows.apply import ApplyWorkflow
from workflows.module_lock import ModuleLockWorkflow
from workflows.project_lock import ProjectLockWorkflow

ALL_WORKFLOWS = [ApplyWorkflow, ProjectLockWorkflow, ModuleLockWorkflow]

__all__ = ["ALL_WORKFLOWS", "ApplyWorkflow", "ModuleLockWorkflow", "ProjectLockWorkflow"]
