"""`evalkit report`: tables, plots and the static HTML leaderboard built from the results store.

collect  finished runs -> typed entries and pandas frames (leaderboard, breakdowns, claims,
         paired comparisons)
tables   each frame as CSV, Markdown and HTML
plots    matplotlib figures as SVG and PNG, byte-reproducible
site     the static site (Jinja2 templates, shipped CSS/JS) and its manifest
"""
