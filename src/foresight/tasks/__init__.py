"""Tasks tie data, trainer and evaluation together for one kind of run (star graph; text comes next)."""
