"""Drive the built-in authorization server's sign-in and consent pages like a browser.

``browser_authorize`` follows redirects within the authorization server, keeps cookies (the
``httpx.AsyncClient``'s jar), fills the sign-in form, approves or denies on the consent page
(posting the forms' hidden fields, CSRF token included) and returns the final redirect
``Location`` — the client's redirect URI with ``code``/``error``, ``state`` and ``iss`` —
without following it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import httpx

__all__ = ["BrowserError", "browser_authorize", "parse_forms"]

MAX_STEPS = 10


class BrowserError(AssertionError):
    """The pages did not behave as a browser flow expects (the message says what was seen)."""


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    #: (name, value) of the submit buttons
    buttons: list[tuple[str, str]] = field(default_factory=list)
    inputs: set[str] = field(default_factory=set)


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []
        self._current: Form | None = None
        self.errors: list[str] = []
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self._current = Form(action=a.get("action", ""), method=a.get("method", "get").lower())
            self.forms.append(self._current)
        elif tag == "input" and self._current is not None and a.get("name"):
            self._current.inputs.add(a["name"])
            if a.get("type", "text") == "hidden":
                self._current.fields[a["name"]] = a.get("value", "")
        elif tag == "button" and self._current is not None and a.get("name"):
            self._current.buttons.append((a["name"], a.get("value", "")))
        elif "error" in a.get("class", "").split():
            self._in_error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._current = None
        elif tag == "p":
            self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error and data.strip():
            self.errors.append(data.strip())


def parse_forms(page: str) -> tuple[list[Form], list[str]]:
    """The forms of an HTML page and the texts of its error messages."""
    parser = _FormParser()
    parser.feed(page)
    return parser.forms, parser.errors


async def browser_authorize(client: httpx.AsyncClient, authorize_url: str, email: str, password: str, *,
                            approve: bool = True) -> str:
    """Sign in as ``email`` and approve (or deny) the request; return the redirect to the client."""
    server = urlsplit(authorize_url)
    authorize_path = server.path
    response = await client.get(authorize_url, follow_redirects=False)
    signed_in = False
    for _ in range(MAX_STEPS):
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            target = urlsplit(location)
            if (target.scheme, target.netloc, target.path) != (server.scheme, server.netloc, authorize_path):
                return location
            response = await client.get(location, follow_redirects=False)
            continue
        if response.status_code not in (200, 401) or "text/html" not in response.headers.get("content-type", ""):
            raise BrowserError(f"unexpected response {response.status_code} from {response.url}: {response.text[:500]}")
        forms, errors = parse_forms(response.text)
        posting = [f for f in forms if f.method == "post"]
        login = next((f for f in posting if "password" in f.inputs), None)
        consent = next((f for f in posting if f.fields.get("step") == "consent"), None)
        if login is not None:
            if signed_in or response.status_code == 401:
                raise BrowserError(f"sign-in failed: {' '.join(errors) or response.status_code}")
            data = {**login.fields, "email": email, "password": password}
            signed_in = True
            response = await client.post(urljoin(str(response.url), login.action), data=data,
                                         follow_redirects=False)
            continue
        if consent is not None:
            decision = "approve" if approve else "deny"
            if ("decision", decision) not in consent.buttons:
                raise BrowserError(f"the consent page offers no {decision!r} button: {' '.join(errors)}")
            data = {**consent.fields, "decision": decision}
            response = await client.post(urljoin(str(response.url), consent.action), data=data,
                                         follow_redirects=False)
            continue
        raise BrowserError(f"page without a sign-in or consent form at {response.url}: {response.text[:500]}")
    raise BrowserError(f"no redirect to the client after {MAX_STEPS} steps")
