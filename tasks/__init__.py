"""Prefect tasks: one unit of work each, around the negset library."""
