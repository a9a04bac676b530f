"""`python -m platformctl.cli`: the same as the `platform-apply` console script."""

from platformctl.cli.main import console

console()
