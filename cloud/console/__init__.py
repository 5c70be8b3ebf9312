"""The labelling console: Jinja2 pages (templates/) and hand-written JS and CSS (static/)."""
