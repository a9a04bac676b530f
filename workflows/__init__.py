"""The workflows; the worker registers `workflows.registry.ALL_WORKFLOWS`.

Empty on purpose: the sandbox runs this package's code again for every workflow
instance it creates, so anything imported here is paid by every apply and lock.
"""
