"""A report folder: its schema and store, figures, the HTML page, contact sheets and model comparison."""
