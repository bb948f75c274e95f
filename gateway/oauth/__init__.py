"""The gateway's built-in OAuth 2.1 authorization server: one issuer per tenant.

``AuthServer(settings, db).routes()`` serves, for every tenant ``<t>`` (issuer
``<origin>/t/<t>``):

* ``/.well-known/oauth-authorization-server/t/<t>`` — RFC 8414 metadata;
* ``/t/<t>/oauth/authorize`` — authorization code + PKCE (S256), sign-in and consent pages;
* ``/t/<t>/oauth/token`` — code exchange and refresh (rotating refresh tokens);
* ``/t/<t>/oauth/register`` — RFC 7591 dynamic registration (client ID metadata documents work
  without registering);
* ``/t/<t>/oauth/revoke`` — RFC 7009;
* ``/t/<t>/oauth/jwks`` — the keys that verify the access tokens (``typ: at+jwt``, ES256).

Importing this package registers its tables (``oauth_*``) on :data:`kontor.gateway.db.Base`.
**Gateway code must import ``kontor.gateway.oauth`` before calling** :meth:`GatewayDB.init`,
otherwise those tables are not created.
"""

from kontor.gateway.oauth import store as _store  # noqa: F401 - registers the oauth_* tables on Base
from kontor.gateway.oauth.endpoints import AuthServer

__all__ = ["AuthServer"]
