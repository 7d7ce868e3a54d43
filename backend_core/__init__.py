"""backend_core: the resilient live market-data library behind the Reflex app.

It never imports reflex (DESIGN.md rule 1): everything here can be served by any ASGI
server and tested without a browser.
"""

__version__ = "0.1.0"
