"""Figures and static HTML reports for runs and evaluations."""
