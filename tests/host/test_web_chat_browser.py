"""The web chat in a real browser: headless Chromium (Debian's ``chromium``) driven by Playwright's
``playwright-core`` (pinned in tests/browser/package-lock.json, installed by ``make test``).

Sign in on the gateway's pages, ask, watch the answer stream in, open a citation's passage,
approve a writing tool, fill the composer from a prompt (its argument form) and attach a resource
through the "+" menu, give feedback, reload, check that markup from the model and a tool stays
text, stop an answer with Esc, and look at the page on a phone-sized screen. The screenshot of the
chat is saved to tests/browser/artifacts/chat.png (and copied to the system's temp folder as
kontor-chat.png).

Without Chromium or the npm package the test is skipped, unless ``KONTOR_REQUIRE_BROWSER=1`` (CI)
makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.gateway.mesh import PASSWORD
from tests.host.fakes import openai_turn, sse_reply
from tests.host.test_web_chat_http import ADA, TENANT, ChatEnv, answer, chat_env, tool_calls

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

BROWSER_DIR = Path(__file__).resolve().parents[1] / "browser"
ARTIFACTS = BROWSER_DIR / "artifacts"
SCRIPT = BROWSER_DIR / "chat_flow.mjs"
REQUIRE = "KONTOR_REQUIRE_BROWSER"
RESOURCE_ANSWER = "Lieferungen erfolgen frei Haus ab 500 EUR; Teillieferungen sind zulässig."


def _requirements() -> tuple[str, str]:
    """(chromium, node), or skip (fail with KONTOR_REQUIRE_BROWSER=1) naming what is missing."""
    chromium = os.environ.get("KONTOR_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    node = shutil.which("node") or ""
    missing = []
    if not Path(chromium).is_file():
        missing.append("Chromium (apt-get install chromium)")
    if not node:
        missing.append("Node.js (node)")
    if not (BROWSER_DIR / "node_modules" / "playwright-core" / "package.json").is_file():
        missing.append("playwright-core (cd tests/browser && npm ci)")
    if missing:
        problem = "missing " + ", ".join(missing)
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{REQUIRE}=1 but the browser test cannot run: {problem}", pytrace=False)
        pytest.skip(f"browser test skipped: {problem} (set {REQUIRE}=1 to make this an error)")
    return chromium, node


@pytest.fixture(scope="module")
def browser_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatEnv]:
    _requirements()
    with chat_env(tmp_path_factory.mktemp("web-chat-browser")) as env:
        yield env


def test_a_user_signs_in_asks_approves_and_gives_feedback_in_chromium(browser_env: ChatEnv, tmp_path: Path):
    chromium, node = _requirements()
    env = browser_env
    streamed = ["Die Lieferung ", "der Sechskantschrauben M8 ", "erfolgt innerhalb von ", "**14 Werktagen** ",
                "nach Bestellung [1]. ", "Der Stückpreis liegt bei 0,12 EUR [2]."]
    injected = "<img src=x onerror=\"window.__kontorInjected=true;alert('model')\">"
    env.fake.script(
        # 1. a search through the gateway, then an answer streamed in pieces
        tool_calls(("s1", "lakehouse__search", {"query": "Lieferfrist Sechskantschrauben M8"})),
        answer(*streamed, delay=0.3),
        # 2. a writing tool that needs approval
        tool_calls(("w1", "lakehouse__write_note", {"text": "Schrauben nachbestellen"})),
        answer("Die Notiz ist gespeichert."),
        # 3. a question from a prompt, with a resource attached
        answer(RESOURCE_ANSWER),
        # 4. markup from a tool and from the model
        tool_calls(("h1", "lakehouse__html", {})),
        answer(f"{injected}<script>window.__kontorInjected=true</script> Nur Text."),
        # 5. an answer that never ends (Esc stops it)
        sse_reply(openai_turn(texts=["Es war einmal "], finish_reason=None, done=False), hang=True),
    )
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    config = {"origin": env.origin, "tenant": TENANT, "email": ADA, "password": PASSWORD, "chromium": chromium,
              "userDataDir": str(tmp_path / "chromium-profile"), "artifacts": str(ARTIFACTS)}
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    run = subprocess.run([node, str(SCRIPT), str(config_path)], cwd=BROWSER_DIR, capture_output=True, text=True,
                         timeout=240)
    try:
        seen: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        pytest.fail(f"the browser script failed (exit {run.returncode}): {run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    assert run.returncode == 0, f"{seen.get('error')}\n{run.stderr[-2000:]}"
    steps = {s["name"]: s for s in seen["steps"]}

    assert steps["gateway-signin"]["url"] == f"{env.origin}/t/{TENANT}/oauth/authorize"
    assert steps["signed-in"]["who"] == ADA

    answered = steps["answered"]
    # as shown: bold without its stars, each [n] a button labelled n
    final = re.sub(r"\[(\d)\]", r"\1", "".join(streamed).replace("**", "")).strip()
    assert answered["finalText"].strip() == final
    growing = [p for p in answered["partials"] if p.strip() and p.strip() != final]
    assert len(growing) >= 2, answered["partials"]  # the text appeared piece by piece
    assert all(final.startswith(p.strip()[:20]) for p in growing)
    assert "/chat/c/" in answered["url"]  # the new conversation got its own address
    assert (steps["tool-card"]["tool"], steps["tool-card"]["status"]) == ("lakehouse__search", "ok")

    chips = steps["chips"]["texts"]
    assert len(chips) == 2 and "Rahmenvertrag Schraubenlieferung" in chips[0] and "§ 4 Lieferfristen" in chips[0]
    panel = steps["panel"]
    assert panel["title"] == "[1] Rahmenvertrag Schraubenlieferung"
    assert "rahmenvertrag.pdf" in panel["meta"] and "p. 2" in panel["meta"]
    assert panel["mark"] == ("Die Lieferung der Sechskantschrauben M8 erfolgt innerhalb von 14 Werktagen nach "
                             "Bestellung.")
    assert "§ 4 Lieferfristen." in panel["body"] and "Vertragsstrafe" in panel["body"]  # the passage in context
    assert panel["focused"] == "close-panel"

    approved = steps["approved"]
    assert "may change or delete data" in approved["askText"] and approved["approveFocused"] == "Allow once"
    assert approved["status"] == "ok" and approved["preview"] == "stored: Schrauben nachbestellen"
    assert approved["answer"] == "Die Notiz ist gespeichert."

    composed = steps["prompt-and-resource"]
    question = ("Summarize what our documents say about Lieferbedingungen. Answer as bullets, and cite your "
                "sources.")
    assert (composed["menuFocus"], composed["menuNext"]) == ("menu-resource", "menu-prompt")
    assert [label.strip() for label in composed["promptLabels"]] == ["topic * (required)", "style"]
    assert composed["promptFormFocus"] == "prompt-arg-0" and composed["stillOpen"] == 1
    assert composed["composed"] == question and composed["composedFocus"] == "prompt"
    assert composed["resourceFilterFocus"] == "resource-filter"
    assert composed["allResources"] == ["<img src=x onerror=alert('resource')>Evil resource",  # as text
                                        "Lieferbedingungen 2025", "Company logo", "A document by its id"]
    assert composed["dialogImages"] == 0
    assert composed["filtered"] == ["Lieferbedingungen 2025"]
    assert [c.strip() for c in composed["chips"]] == ["Lieferbedingungen 2025"] and composed["escFocus"] == "more"
    assert composed["question"] == question and [a.strip() for a in composed["attached"]] == ["Lieferbedingungen 2025"]
    assert composed["chipsAfterSend"] and composed["answer"] == RESOURCE_ANSWER
    sent = next(r.json for r in env.fake.requests if "Attached resource docs://lieferbedingungen" in json.dumps(r.json))
    user_text = [m for m in sent["messages"] if m["role"] == "user"][-1]["content"]
    assert user_text.startswith(f"{question}\n\n---\nAttached resource docs://lieferbedingungen:\n"
                                "Lieferbedingungen 2025.")

    assert steps["feedback"] == {**steps["feedback"], "pressed": "true", "thanks": "Thanks for your feedback."}
    settings = steps["settings"]
    assert settings["model"] == "kontor-test-model (openai)" and settings["approvals"] == ["None yet."]
    assert settings["dialogFocus"]  # the dialog takes the focus (keyboard users land in it)
    upload = steps["upload"]
    assert upload["label"] == "✓ lieferbedingungen.txt was added to your documents." and upload["progress"] == "100"
    reloaded = steps["reloaded"]
    assert [a.strip() for a in reloaded["answers"]] == [final, "Die Notiz ist gespeichert.", RESOURCE_ANSWER]
    assert [a.strip() for a in reloaded["attached"]] == ["Lieferbedingungen 2025"]
    assert reloaded["pressed"] == "true"
    assert reloaded["conversations"][0].startswith("Wie lange dauert die Lieferung")

    markup = steps["markup"]
    assert markup["answer"].startswith(injected) and "Nur Text." in markup["answer"]
    assert markup["preview"].startswith("<script>alert('tool')</script>")
    assert markup["images"] == 0 and markup["injected"] is False

    stopped = steps["stopped"]
    assert stopped["answer"].strip() == "Es war einmal" and stopped["stopHidden"]
    assert any("Stopped" in n for n in stopped["notice"])

    phone = steps["phone"]
    assert phone["phoneDialog"]
    assert phone["sidebarHidden"] and phone["sidebarShown"] and phone["composerVisible"] and not phone["overflow"]

    assert seen["dialogs"] == [] and seen["pageErrors"] == [] and seen["cspViolations"] == []
    # (the gateway's own sign-in pages have no icon: the browser's /favicon.ico there is a 404, not ours)
    errors = [e for e in seen["consoleErrors"] if not (e["source"] == f"{env.origin}/favicon.ico"
                                                       and "/oauth/authorize" in e["page"])]
    assert seen["failed"] == [] and errors == [], (seen["failed"], errors)

    screenshot = ARTIFACTS / "chat.png"
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000
    shutil.copyfile(screenshot, Path(tempfile.gettempdir()) / "kontor-chat.png")
