"""How training runs: the SRS loop, distributed setup, LR schedule and checkpoint/resume."""
