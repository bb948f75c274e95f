"""Jinja2 templates of the registry's pages (:mod:`kontor.registry.pages`); a package so setuptools ships them."""
