"""Server-rendered HTML of the authorization server: sign-in, consent and error pages.

Plain HTML and one same-origin stylesheet; no scripts. Every value shown is escaped. Every
HTML response carries the anti-framing and no-store headers (:func:`html_headers`); the
consent page adds the redirect URI's origin to ``form-action``, because browsers apply that
directive to the redirect that follows the form submission as well.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from urllib.parse import urlsplit

from starlette.responses import HTMLResponse, Response

from kontor.gateway.scopes import ADMIN_SCOPE, READ, WRITE

__all__ = [
    "CSP",
    "STYLESHEET",
    "consent_page",
    "error_page",
    "html_headers",
    "login_page",
    "scope_description",
    "stylesheet_response",
]

CSP = "frame-ancestors 'none'; default-src 'self'; form-action 'self'"
LOCKED_MESSAGE = ("This account is temporarily locked after too many failed sign-in attempts. "
                  "Try again later or ask your administrator.")


def html_headers(form_action: str | None = None) -> dict[str, str]:
    csp = CSP if not form_action else f"{CSP} {form_action}"
    return {
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": csp,
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def form_action_source(redirect_uri: str) -> str | None:
    """A CSP source for the origin of ``redirect_uri`` (IPv6 literals cannot be expressed: scheme only)."""
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    if ":" in parts.hostname:
        return f"{parts.scheme}:"
    return f"{parts.scheme}://{parts.netloc}"


def scope_description(scope: str) -> str:
    if scope == ADMIN_SCOPE:
        return "Administer this organisation: users, servers and tool approvals"
    server, _, kind = scope.rpartition(":")
    if server and kind == READ:
        return f"Read data and use the read-only tools of “{server}”"
    if server and kind == WRITE:
        return f"Use the tools of “{server}” that can change data"
    return "Unknown permission"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _page(title: str, body: str, stylesheet: str | None) -> str:
    link = f'<link rel="stylesheet" href="{_e(stylesheet)}">' if stylesheet else ""
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        f"<title>{_e(title)} · Kontor</title>{link}</head>"
        f'<body><main class="card"><p class="brand">Kontor</p>{body}</main></body></html>\n'
    )


def _client_line(client_name: str | None, client_id: str) -> str:
    if client_name:
        return f"<strong>{_e(client_name)}</strong>"
    return f"<strong><code>{_e(client_id)}</code></strong>"


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{_e(name)}" value="{_e(value)}">'


def login_page(*, stylesheet: str | None, action: str, csrf_token: str, tenant_name: str, client_name: str | None,
               client_id: str, email: str = "", error: str | None = None, status: int = 200) -> HTMLResponse:
    error_html = f'<p class="error" role="alert">{_e(error)}</p>' if error else ""
    body = (
        "<h1>Sign in</h1>"
        f"<p>to <strong>{_e(tenant_name)}</strong> to continue to {_client_line(client_name, client_id)}.</p>"
        f"{error_html}"
        f'<form method="post" action="{_e(action)}">'
        f'{_hidden("csrf_token", csrf_token)}{_hidden("step", "login")}'
        '<label for="email">E-mail</label>'
        f'<input id="email" name="email" type="email" autocomplete="username" required maxlength="320" '
        f'value="{_e(email)}" autofocus>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required '
        'maxlength="1024">'
        '<div class="actions"><button type="submit">Sign in</button></div>'
        "</form>"
        f'<p class="small">Client ID: <code>{_e(client_id)}</code></p>'
    )
    return HTMLResponse(_page("Sign in", body, stylesheet), status_code=status, headers=html_headers())


def consent_page(*, stylesheet: str | None, action: str, csrf_token: str, tenant_name: str,
                 client_name: str | None, client_id: str, metadata_document: bool, redirect_uri: str,
                 user_email: str, scopes: Sequence[str], unavailable: Sequence[str]) -> HTMLResponse:
    items = "".join(f"<li><code>{_e(s)}</code><span>{_e(scope_description(s))}</span></li>" for s in scopes)
    granted = (f'<ul class="scopes">{items}</ul>' if scopes
               else '<p class="error">None of the requested permissions is available to your account. '
                    "You can only deny this request.</p>")
    missing = ""
    if unavailable:
        names = ", ".join(f"<code>{_e(s)}</code>" for s in unavailable)
        missing = f'<p class="small">Requested but not available to your account (not granted): {names}</p>'
    origin_note = ""
    if metadata_document:
        origin_note = (f'<p class="small">This application is identified by its web address '
                       f"<code>{_e(urlsplit(client_id).hostname or client_id)}</code>.</p>")
    approve = '<button type="submit" name="decision" value="approve">Allow</button>' if scopes else ""
    body = (
        "<h1>Allow access?</h1>"
        f"<p>{_client_line(client_name, client_id)} asks for access to <strong>{_e(tenant_name)}</strong> "
        f"on your behalf. You are signed in as <strong>{_e(user_email)}</strong>.</p>"
        f"{origin_note}"
        "<h2>Permissions</h2>"
        f"{granted}{missing}"
        '<dl class="details">'
        f"<dt>Client ID</dt><dd><code>{_e(client_id)}</code></dd>"
        f"<dt>After your decision you are sent to</dt><dd><code>{_e(redirect_uri)}</code></dd>"
        "</dl>"
        "<p class=\"small\">Only allow access if you started this from the application above and trust it.</p>"
        f'<form method="post" action="{_e(action)}">'
        f'{_hidden("csrf_token", csrf_token)}{_hidden("step", "consent")}'
        '<div class="actions">'
        '<button type="submit" name="decision" value="deny" class="secondary">Deny</button>'
        f"{approve}</div></form>"
        f'<form method="post" action="{_e(action)}" class="switch">'
        f'{_hidden("csrf_token", csrf_token)}{_hidden("step", "logout")}'
        '<button type="submit" class="link">Not you? Sign in with another account</button></form>'
    )
    return HTMLResponse(_page("Allow access", body, stylesheet),
                        headers=html_headers(form_action_source(redirect_uri)))


def error_page(*, stylesheet: str | None, title: str, message: str, status: int = 400) -> HTMLResponse:
    body = (f"<h1>{_e(title)}</h1><p>{_e(message)}</p>"
            '<p class="small">Return to the application and start again. If this keeps happening, '
            "contact the application's vendor or your administrator.</p>")
    return HTMLResponse(_page(title, body, stylesheet), status_code=status, headers=html_headers())


STYLESHEET = """
:root { color-scheme: light dark; --fg: #1d2430; --muted: #5b6472; --bg: #f3f5f8; --card: #fff;
        --line: #d8dde5; --accent: #1f5fbf; --accent-fg: #fff; --error: #a3261c; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e7eaf0; --muted: #a6aebb; --bg: #14171c; --card: #1d2128; --line: #333a45;
          --accent: #6ea1ff; --accent-fg: #0b1020; --error: #ff8a80; }
}
* { box-sizing: border-box; }
body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
       background: var(--bg); color: var(--fg);
       font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.card { width: 100%; max-width: 30rem; margin: 2rem 1rem; padding: 2rem; background: var(--card);
        border: 1px solid var(--line); border-radius: 12px; }
.brand { margin: 0 0 1rem; font-weight: 700; letter-spacing: .04em; color: var(--muted); }
h1 { font-size: 1.5rem; margin: 0 0 .5rem; }
h2 { font-size: 1.05rem; margin: 1.5rem 0 .5rem; }
label { display: block; margin: 1rem 0 .25rem; font-weight: 600; }
input[type=email], input[type=password] { width: 100%; padding: .6rem .7rem; font: inherit; color: inherit;
  background: transparent; border: 1px solid var(--line); border-radius: 8px; }
input:focus, button:focus { outline: 2px solid var(--accent); outline-offset: 2px; }
.actions { display: flex; gap: .75rem; justify-content: flex-end; margin-top: 1.5rem; }
button { font: inherit; padding: .6rem 1.2rem; border-radius: 8px; border: 1px solid var(--accent);
         background: var(--accent); color: var(--accent-fg); cursor: pointer; }
button.secondary { background: transparent; color: var(--fg); border-color: var(--line); }
button.link { background: none; border: none; padding: 0; color: var(--accent); text-decoration: underline; }
.switch { margin-top: 1rem; text-align: right; }
.error { color: var(--error); font-weight: 600; }
.small { font-size: .875rem; color: var(--muted); }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .9em; word-break: break-all; }
ul.scopes { list-style: none; padding: 0; margin: 0; border: 1px solid var(--line); border-radius: 8px; }
ul.scopes li { padding: .6rem .8rem; border-top: 1px solid var(--line); display: flex; flex-direction: column; }
ul.scopes li:first-child { border-top: none; }
ul.scopes li span { color: var(--muted); font-size: .9rem; }
dl.details { margin: 1.25rem 0 0; font-size: .9rem; }
dl.details dt { color: var(--muted); margin-top: .5rem; }
dl.details dd { margin: 0; }
"""


def stylesheet_response() -> Response:
    return Response(STYLESHEET, media_type="text/css", headers={
        "Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})
