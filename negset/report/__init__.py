"""Step 6, report: one offline HTML page and the CSV files behind `dvc plots show`."""
