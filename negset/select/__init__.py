"""Step 4, select: the rules that leave candidates out, bands, quotas and diverse picks."""
