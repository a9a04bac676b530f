from workflows.apply import ApplyWorkflow
from workflows.module_lock import ModuleLockWorkflow
from workflows.module_state import ModuleStateWorkflow
from workflows.project_lock import ProjectLockWorkflow
from workflows.reapply import ReapplyWorkflow

ALL_WORKFLOWS = [ApplyWorkflow, ProjectLockWorkflow, ModuleLockWorkflow, ModuleStateWorkflow, ReapplyWorkflow]

__all__ = [
    "ALL_WORKFLOWS",
    "ApplyWorkflow",
    "ModuleLockWorkflow",
    "ModuleStateWorkflow",
    "ProjectLockWorkflow",
    "ReapplyWorkflow",
]
