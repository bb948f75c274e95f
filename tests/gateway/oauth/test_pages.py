"""Sign-in and consent pages: CSRF, anti-framing headers, the session cookie, failed sign-ins, lockout."""

from __future__ import annotations

from urllib.parse import urljoin

import httpx

from kontor.gateway.oauth import AuthServer
from kontor.gateway.oauth.pages import LOCKED_MESSAGE
from tests.gateway.oauth.conftest import (
    MEMBER,
    ORIGIN,
    PASSWORD,
    REDIRECT,
    TENANT,
    authorize_url,
    pkce,
    register,
)
from tests.gateway.oauth_browser import parse_forms

CSP_PARTS = ("frame-ancestors 'none'", "default-src 'self'", "form-action 'self'")


async def login_page(client: httpx.AsyncClient) -> tuple[httpx.Response, str, dict[str, str]]:
    registered = await register(client)
    _, challenge = pkce()
    page = await client.get(authorize_url(registered["client_id"], challenge))
    assert page.status_code == 200
    (form,), _ = parse_forms(page.text)
    return page, urljoin(str(page.url), form.action), form.fields


async def consent_page(client: httpx.AsyncClient) -> tuple[httpx.Response, str, dict[str, str]]:
    _, action, fields = await login_page(client)
    signed_in = await client.post(action, data={**fields, "email": MEMBER, "password": PASSWORD})
    assert signed_in.status_code == 303
    page = await client.get(signed_in.headers["location"])
    assert page.status_code == 200 and 'value="consent"' in page.text
    forms, _ = parse_forms(page.text)
    consent = next(f for f in forms if f.fields.get("step") == "consent")
    return page, urljoin(str(page.url), consent.action), consent.fields


def assert_page_headers(response: httpx.Response) -> None:
    assert response.headers["x-frame-options"] == "DENY"
    csp = response.headers["content-security-policy"]
    assert all(part in csp for part in CSP_PARTS), csp
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_html_pages_carry_anti_clickjacking_headers(client: httpx.AsyncClient) -> None:
    login, _, _ = await login_page(client)
    assert_page_headers(login)
    assert login.headers["content-security-policy"] == "; ".join(CSP_PARTS)
    error = await client.get(authorize_url("nobody", None))
    assert error.status_code == 400
    assert_page_headers(error)
    consent, _, _ = await consent_page(client)
    assert_page_headers(consent)
    # the consent form's redirect goes to the client: its origin is allowed as a form target too
    assert consent.headers["content-security-policy"].endswith("form-action 'self' http://127.0.0.1:33418")


async def test_session_cookie_is_httponly_lax_and_scoped_to_the_tenant(client: httpx.AsyncClient) -> None:
    login, _, _ = await login_page(client)
    cookie = login.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "samesite"} <= attributes
    assert f"Path=/t/{TENANT}/" in cookie and "SameSite=lax" in cookie
    assert "secure" not in attributes  # the test origin is http


async def test_session_cookie_is_secure_on_an_https_origin(auth: AuthServer) -> None:
    from starlette.applications import Starlette

    from kontor.gateway.config import GatewaySettings

    secure = AuthServer(GatewaySettings(public_origin="https://gw.example", dev_mode=False), auth.db,
                        keystore=auth.keystore)
    transport = httpx.ASGITransport(app=Starlette(routes=secure.routes()))
    async with httpx.AsyncClient(transport=transport, base_url="https://gw.example") as https:
        registered = await register(https, redirect_uris=["https://app.example/cb"])
        _, challenge = pkce()
        url = authorize_url(registered["client_id"], challenge, redirect_uri="https://app.example/cb",
                            resource=f"https://gw.example/t/{TENANT}/mcp")
        page = await https.get(url.replace(ORIGIN, "https://gw.example"))
    assert page.status_code == 200, page.text
    assert "Secure" in page.headers["set-cookie"]


async def test_consent_post_without_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    _, action, fields = await consent_page(client)
    without = {k: v for k, v in fields.items() if k != "csrf_token"}
    response = await client.post(action, data={**without, "decision": "approve"})
    assert response.status_code == 400 and "location" not in response.headers
    wrong = await client.post(action, data={**fields, "csrf_token": "forged", "decision": "approve"})
    assert wrong.status_code == 400 and "location" not in wrong.headers
    ok = await client.post(action, data={**fields, "decision": "approve"})
    assert ok.status_code == 303 and ok.headers["location"].startswith(REDIRECT + "?code=")


async def test_consent_post_with_another_sessions_token_is_refused(client: httpx.AsyncClient) -> None:
    _, action, fields = await consent_page(client)
    # a second browser (another cookie jar) with its own signed-in session
    async with httpx.AsyncClient(transport=client._transport, base_url=ORIGIN) as other:
        _, _, other_fields = await consent_page(other)
        assert other_fields["csrf_token"] != fields["csrf_token"]
        response = await other.post(action, data={**fields, "decision": "approve"})
        assert response.status_code == 400 and "location" not in response.headers
    # and a POST carrying a valid token but no session cookie at all
    async with httpx.AsyncClient(transport=client._transport, base_url=ORIGIN) as cookieless:
        response = await cookieless.post(action, data={**fields, "decision": "approve"})
        assert response.status_code == 400


async def test_login_post_without_csrf_token_is_refused(client: httpx.AsyncClient) -> None:
    _, action, fields = await login_page(client)
    response = await client.post(action, data={"step": "login", "email": MEMBER, "password": PASSWORD})
    assert response.status_code == 400 and "set-cookie" not in response.headers


async def test_failed_sign_in_shows_a_generic_error(client: httpx.AsyncClient) -> None:
    _, action, fields = await login_page(client)
    for email, password in ((MEMBER, "wrong password!"), ("nobody@acme.example", PASSWORD)):
        response = await client.post(action, data={**fields, "email": email, "password": password})
        assert response.status_code == 401
        _, errors = parse_forms(response.text)
        assert errors == ["The e-mail address or password is not correct."]


async def test_locked_account_shows_the_lockout_message(client: httpx.AsyncClient) -> None:
    _, action, fields = await login_page(client)
    for _ in range(3):  # max_failed_logins=3 in the fixture
        response = await client.post(action, data={**fields, "email": MEMBER, "password": "wrong password!"})
        assert response.status_code == 401
    locked = await client.post(action, data={**fields, "email": MEMBER, "password": PASSWORD})
    assert locked.status_code == 401
    _, errors = parse_forms(locked.text)
    assert errors == [LOCKED_MESSAGE]
    assert "locked" in LOCKED_MESSAGE


async def test_sign_in_issues_a_new_session_id(client: httpx.AsyncClient) -> None:
    _, action, fields = await login_page(client)
    before = client.cookies.get("kontor_oauth_session")
    signed_in = await client.post(action, data={**fields, "email": MEMBER, "password": PASSWORD})
    assert signed_in.status_code == 303
    after = client.cookies.get("kontor_oauth_session")
    assert before and after and before != after


async def test_sign_in_with_another_account(client: httpx.AsyncClient) -> None:
    page, _, _ = await consent_page(client)
    forms, _ = parse_forms(page.text)
    logout = next(f for f in forms if f.fields.get("step") == "logout")
    response = await client.post(urljoin(str(page.url), logout.action), data=logout.fields)
    assert response.status_code == 200 and 'name="password"' in response.text


async def test_client_supplied_text_is_escaped(client: httpx.AsyncClient) -> None:
    registered = await register(client, client_name='<script>alert("x")</script>')
    _, challenge = pkce()
    page = await client.get(authorize_url(registered["client_id"], challenge))
    assert "<script>" not in page.text and "&lt;script&gt;" in page.text


async def test_stylesheet_is_served(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/t/{TENANT}/oauth/static/kontor.css")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/css")
