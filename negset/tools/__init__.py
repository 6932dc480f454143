"""Tools around the pipeline: evaluate (chosen vs random negatives), tagcheck (tags vs ground truth), release."""
