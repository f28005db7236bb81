"""Common: what every wing uses (errors, safe file IO, settings from the schema, progress lines, locks,
disk-space checks, optimizers and schedules). Imports no wing.
"""
