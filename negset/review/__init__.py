"""A person in the loop: ``negset review`` (a local web page), its decisions (reviews.csv), the audit."""
