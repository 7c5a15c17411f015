"""WSGI entry point: ``gunicorn wsgi:app`` (see gunicorn.conf.py and the Procfile)."""

from spacio import create_app

app = create_app()
