"""Sphinx configuration of the lab book (scripts/book.py renders build/book-src/ with it, `-c book`).

Offline by design: the theme comes from its wheel (sphinx-book-theme, on pydata-sphinx-theme), the
notebooks are already executed (execution off), and no page loads anything from the internet.
"""

project = "Redis/Valkey Production Patterns Lab"
author = "the lab's contributors"
copyright = "the lab's contributors, BSD-3-Clause"

extensions = ["myst_nb"]
nb_execution_mode = "off"  # the outputs are this build's own run (scripts/book.py), never stored ones
nb_output_stderr = "show"
nb_merge_streams = True
myst_heading_anchors = 2  # `## ` headings get GitHub-style ids, linked from the known-wrong page
exclude_patterns = ["**/.ipynb_checkpoints"]
smartquotes = False  # quotes stay as the lessons type them (`"not found"`, `HSET's`)

html_theme = "sphinx_book_theme"
html_title = "Redis/Valkey Lab"
html_static_path = ["static"]
html_css_files = ["book.css"]
html_show_sourcelink = False
html_copy_source = False
html_context = {"default_mode": "auto"}  # light or dark, as the reader's system says
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "navbar_persistent": [],  # the sidebar has the search field: no second one in a header strip
}
