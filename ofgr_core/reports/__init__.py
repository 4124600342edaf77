"""Reading finished runs side by side: comparison with paired tests, report folders, tables, t-SNE."""
