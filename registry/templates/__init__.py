"""Jinja2 templates of the registry's review pages (a package so setuptools ships them as package data)."""
