"""Every workflow the worker registers (not in `workflows/__init__.py`: see there)."""

from workflows.dynamic import PlatformWorkflow
from workflows.module_state import ModuleStateWorkflow
from workflows.project_lock import ProjectLockWorkflow
from workflows.reapply import ReapplyWorkflow

ALL_WORKFLOWS = [PlatformWorkflow, ProjectLockWorkflow, ModuleStateWorkflow, ReapplyWorkflow]
