"""Built-in search space definitions, shipped inside the package as ``wpl_nas.search_spaces``."""
