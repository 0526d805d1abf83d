"""The portal's pages, partials and forms, one module per resource.

Every query runs as the signed-in user under RLS (``Database.as_user``): a case,
payment or relationship of another tenant is simply not found, and answers
404, which does not reveal that it exists. The live regions of a page are
elements with ``data-live`` (the tables whose changes refresh them) and
``data-live-src`` (their partial); realtime-client.js does the rest.

Each module holds one class of endpoints built on ``rendering.Views`` (the
settings, the database, the templates, and how to answer); an endpoint that
needs a user says so with ``@signed_in`` (portal/access.py). What the pages
read is in ``queries``; app.py maps the URLs.
"""
