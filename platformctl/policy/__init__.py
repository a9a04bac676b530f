"""Pure policy checks, one file per step of the apply. No I/O, no Temporal."""
