"""Prefect flows: they compose the tasks in tasks/ and decide nothing themselves."""
