"""Passes: graph-to-graph rewrites and decisions made before code generation (kernel schedules, memory plan)."""
