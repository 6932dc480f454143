"""Step 1, ingest: sources (local, S3, HTTP), labels of the positives, pins and the stat cache."""
