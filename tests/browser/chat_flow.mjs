// Drives the Kontor web chat in headless Chromium (Debian's /usr/bin/chromium) with playwright-core.
//
// Usage: node chat_flow.mjs CONFIG.json   (run by tests/host/test_web_chat_browser.py)
// CONFIG: {origin, tenant, email, password, chromium, userDataDir, artifacts}
// Prints one JSON object with what it saw; exits 1 (with the error in the JSON) when a step fails.
// The test decides from the observations; this script only waits for what a user would wait for.

import { readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const seen = { steps: [], dialogs: [], pageErrors: [], consoleErrors: [], cspViolations: [], failed: [] };
const step = (name, data = {}) => seen.steps.push({ ...data, name, at: Date.now() });

mkdirSync(config.artifacts, { recursive: true });

const context = await chromium.launchPersistentContext(config.userDataDir, {
  executablePath: config.chromium,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  viewport: { width: 1360, height: 900 },
  deviceScaleFactor: 1,
  locale: "de-DE",
  colorScheme: "light",
});

let exitCode = 0;
try {
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(20000);
  page.on("dialog", async (dialog) => { seen.dialogs.push(dialog.message()); await dialog.dismiss(); });
  page.on("pageerror", (error) => seen.pageErrors.push(String(error)));
  page.on("response", (response) => {
    if (response.status() >= 400) seen.failed.push(response.status() + " " + response.url());
  });
  page.on("console", (message) => {
    if (message.type() !== "error") return;
    const text = message.text();
    seen.consoleErrors.push({ text, page: page.url().split("?")[0], source: (message.location() || {}).url || "" });
    if (/Content Security Policy/i.test(text)) seen.cspViolations.push(text);
  });

  // --- sign in through the gateway's pages ---------------------------------------------------
  await page.goto(config.origin + "/chat/");
  step("signin-page", { title: await page.title() });
  await page.fill("#tenant", config.tenant);
  await page.click("button[type=submit]");
  await page.waitForURL(/\/oauth\/authorize/);
  step("gateway-signin", { url: page.url().split("?")[0] });
  await page.fill("#email", config.email);
  await page.fill("#password", config.password);
  await page.click("button[type=submit]");
  await page.click("button[name=decision][value=approve]");
  await page.waitForURL(config.origin + "/chat/");
  await page.waitForSelector("#prompt");
  step("signed-in", { who: await page.textContent(".who-email") });

  // --- a question: streamed text, tool card, citation chips ------------------------------------
  await page.fill("#prompt", "Wie lange dauert die Lieferung der Schrauben M8?");
  await page.keyboard.press("Enter");  // Enter sends
  const partials = [];
  const answer = page.locator(".msg.assistant").last();
  const deadline = Date.now() + 30000;
  while (Date.now() < deadline) {
    const text = (await answer.locator(".answer").textContent().catch(() => "")) || "";
    if (text && partials[partials.length - 1] !== text) partials.push(text);
    if (await answer.locator(".feedback").count()) break;
    await page.waitForTimeout(40);
  }
  const finalText = await answer.locator(".answer").textContent();
  step("answered", { partials, finalText, url: page.url() });
  const card = answer.locator(".tool-card").first();
  step("tool-card", { tool: await card.locator(".tool-name").textContent(),
    status: await card.getAttribute("data-status") });

  // --- the citation opens its passage in the side panel ------------------------------------------
  const chips = answer.locator(".chip");
  step("chips", { texts: await chips.allTextContents() });
  await chips.first().click();
  await page.waitForSelector("#panel:not([hidden])");
  await page.waitForSelector("#panel-body .context", { timeout: 10000 }).catch(() => null);
  step("panel", {
    title: await page.textContent("#panel-title"),
    meta: await page.textContent("#panel-meta"),
    mark: await page.textContent("#panel-body mark"),
    body: await page.textContent("#panel-body"),
    focused: await page.evaluate(() => document.activeElement && document.activeElement.id),
  });
  await page.screenshot({ path: join(config.artifacts, "chat-source.png") });
  await page.keyboard.press("Escape");
  await page.waitForSelector("#panel", { state: "hidden" });

  // --- a writing tool: approve it in the card ----------------------------------------------------
  await page.fill("#prompt", "Speichere bitte eine Notiz: Schrauben nachbestellen.");
  await page.keyboard.press("Enter");
  const approve = page.locator(".approval button", { hasText: "Allow once" });
  await approve.waitFor();
  const askText = await page.locator(".approval").textContent();
  const approveFocused = await page.evaluate(() => document.activeElement && document.activeElement.textContent);
  await approve.click();
  const second = page.locator(".msg.assistant").last();
  await second.locator(".feedback").waitFor();
  step("approved", {
    askText, approveFocused,
    status: await second.locator(".tool-card").first().getAttribute("data-status"),
    preview: await second.locator(".tool-preview").first().textContent(),
    answer: await second.locator(".answer").textContent(),
  });

  // --- "+": use a prompt with an argument, attach a resource, send ---------------------------------
  const active = () => page.evaluate(() => document.activeElement && document.activeElement.id);
  await page.click("#more");
  await page.waitForSelector("#more-menu:not([hidden])");
  const menuFocus = await active();
  await page.keyboard.press("ArrowDown");
  const menuNext = await active();
  await page.keyboard.press("Enter");  // "Use a prompt"
  await page.waitForSelector("#prompt-dialog[open]");
  await page.locator("#prompt-list .picker-item", { hasText: "lakehouse__summarize" }).click();
  await page.waitForSelector("#prompt-form:not([hidden])");
  const promptLabels = await page.locator("#prompt-form label").allTextContents();
  const promptFormFocus = await active();
  await page.keyboard.press("Enter");  // the required topic is empty: the form does not submit
  const stillOpen = await page.locator("#prompt-dialog[open]").count();
  await page.fill("#prompt-arg-0", "Lieferbedingungen");
  await page.screenshot({ path: join(config.artifacts, "chat-prompt.png") });
  await page.click("#prompt-form button[type=submit]");
  await page.waitForSelector("#prompt-dialog:not([open])", { state: "attached" });
  const composed = await page.inputValue("#prompt");
  const composedFocus = await active();

  await page.click("#more");
  await page.click("#menu-resource");
  await page.waitForSelector("#resource-dialog[open]");
  await page.waitForSelector("#resource-list .picker-item");
  const resourceFilterFocus = await active();
  const allResources = await page.locator("#resource-list .picker-item .picker-title").allTextContents();
  const dialogImages = await page.locator("#resource-dialog img").count();
  await page.screenshot({ path: join(config.artifacts, "chat-resources.png") });
  await page.fill("#resource-filter", "liefer");
  const filtered = await page.locator("#resource-list .picker-item .picker-title").allTextContents();
  await page.locator("#resource-list .picker-item", { hasText: "Lieferbedingungen 2025" }).click();
  await page.waitForSelector("#resource-dialog:not([open])", { state: "attached" });
  await page.waitForSelector("#attachment-chips .att-chip");
  const composerChips = await page.locator("#attachment-chips .att-chip").allTextContents();
  // Esc closes a dialog and gives the focus back to "+"
  await page.click("#more");
  await page.click("#menu-resource");
  await page.waitForSelector("#resource-dialog[open]");
  await page.keyboard.press("Escape");
  await page.waitForSelector("#resource-dialog:not([open])", { state: "attached" });
  // the dialog's "close" event (which moves the focus) is a task queued after the open attribute goes
  await page.waitForFunction(() => document.activeElement && document.activeElement.id === "more", null,
    { timeout: 2000 }).catch(() => {});
  const escFocus = await active();
  await page.screenshot({ path: join(config.artifacts, "chat-compose.png") });
  await page.locator("#prompt").focus();
  await page.keyboard.press("Enter");
  const withResource = page.locator(".msg.assistant").nth(2);
  await withResource.locator(".feedback").waitFor();
  const asked = page.locator(".msg.user").last();
  step("prompt-and-resource", {
    menuFocus, menuNext, promptLabels, promptFormFocus, stillOpen, composed, composedFocus, resourceFilterFocus,
    allResources, dialogImages, filtered, chips: composerChips, escFocus,
    question: await asked.locator(".bubble").textContent(),
    attached: await asked.locator(".att-chip").allTextContents(),
    chipsAfterSend: await page.locator("#attachment-chips").isHidden(),
    answer: await withResource.locator(".answer").textContent(),
  });

  // --- feedback with a comment ---------------------------------------------------------------------
  const first = page.locator(".msg.assistant").first();
  await first.locator(".fb-btn[data-rating='1']").click();
  await first.locator(".fb-form input").fill("Genau richtig, danke!");
  await page.keyboard.press("Enter");
  await first.locator(".fb-thanks").waitFor();
  step("feedback", { pressed: await first.locator(".fb-btn[data-rating='1']").getAttribute("aria-pressed"),
    thanks: await first.locator(".fb-thanks").textContent() });

  // the tool card of the first answer, opened, for the screenshot
  await first.locator(".tool-card summary").first().click();
  await page.locator("#prompt").focus();
  await page.screenshot({ path: join(config.artifacts, "chat.png") });
  step("screenshot", { path: join(config.artifacts, "chat.png") });

  // --- the settings panel: the model and the remembered approvals ---------------------------------
  await page.click("#open-settings");
  await page.waitForSelector("#settings[open]");
  await page.waitForFunction(() => document.querySelector("#approval-list li"));
  step("settings", { model: await page.textContent("#settings-model"),
    approvals: await page.locator("#approval-list li").allTextContents(),
    dialogFocus: await page.evaluate(() => Boolean(document.activeElement.closest("dialog"))) });
  await page.keyboard.press("Escape");
  await page.waitForSelector("#settings:not([open])", { state: "attached" });

  // --- a file upload to the ingest server, with its progress bar -------------------------------------
  await page.setInputFiles("#file-input", { name: "lieferbedingungen.txt", mimeType: "text/plain",
    buffer: Buffer.from("Lieferbedingungen: Lieferung innerhalb von 14 Werktagen.\n".repeat(200)) });
  await page.waitForSelector("#upload-status.done");
  step("upload", { label: await page.textContent("#upload-label"),
    progress: await page.getAttribute("#upload-progress", "value") });

  // --- after a reload, everything is still there (from the database) -------------------------------
  await page.reload();
  await page.waitForSelector(".msg.assistant .feedback");
  step("reloaded", {
    answers: await page.locator(".msg.assistant .answer").allTextContents(),
    attached: await page.locator(".msg.user .att-chip").allTextContents(),
    pressed: await page.locator(".msg.assistant").first().locator(".fb-btn[data-rating='1']")
      .getAttribute("aria-pressed"),
    conversations: await page.locator(".conv-link").allTextContents(),
  });

  // --- markup in model output and tool results stays text -------------------------------------------
  await page.goto(config.origin + "/chat/");
  await page.fill("#prompt", "Zeig mir etwas Gefährliches");
  await page.keyboard.press("Enter");
  const evil = page.locator(".msg.assistant").last();
  await evil.locator(".feedback").waitFor();
  await evil.locator(".tool-card summary").first().click();
  step("markup", {
    answer: await evil.locator(".answer").textContent(),
    preview: await evil.locator(".tool-preview").first().textContent(),
    images: await page.locator(".messages img").count(),
    injected: await page.evaluate(() => window.__kontorInjected === true),
  });

  // --- Esc stops a running answer ---------------------------------------------------------------------
  await page.fill("#prompt", "Erzähl eine lange Geschichte");
  await page.keyboard.press("Enter");
  const running = page.locator(".msg.assistant").last();
  await running.locator(".answer").filter({ hasText: "Es war einmal" }).waitFor();
  await page.keyboard.press("Escape");
  await running.locator(".feedback").waitFor();
  step("stopped", { notice: await running.locator(".notice").allTextContents(),
    answer: await running.locator(".answer").textContent(), stopHidden: await page.locator("#stop").isHidden() });

  // --- a phone-sized screen ------------------------------------------------------------------------------
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(config.origin + "/chat/");
  const sidebarHidden = await page.evaluate(() => {
    const r = document.querySelector("#sidebar").getBoundingClientRect();
    return r.right <= 0;
  });
  await page.click("#open-sidebar");
  await page.waitForTimeout(300);
  const sidebarShown = await page.evaluate(() => document.querySelector("#sidebar").getBoundingClientRect().left >= 0);
  await page.keyboard.press("Escape");
  await page.waitForTimeout(300);
  await page.goto(await page.locator(".conv-link").last().getAttribute("href").then((h) => config.origin + h));
  await page.screenshot({ path: join(config.artifacts, "chat-phone.png") });
  await page.click("#more");
  await page.click("#menu-prompt");
  await page.locator("#prompt-list .picker-item").first().click();
  await page.waitForSelector("#prompt-form:not([hidden])");
  const phoneDialog = await page.evaluate(() => {
    const r = document.querySelector("#prompt-dialog").getBoundingClientRect();
    return r.left >= 0 && r.right <= window.innerWidth && r.bottom <= window.innerHeight;
  });
  await page.screenshot({ path: join(config.artifacts, "chat-phone-prompt.png") });
  await page.keyboard.press("Escape");
  await page.waitForSelector("#prompt-dialog:not([open])", { state: "attached" });
  step("phone", { sidebarHidden, sidebarShown, phoneDialog,
    composerVisible: await page.locator("#prompt").isVisible(),
    overflow: await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth) });
} catch (error) {
  exitCode = 1;
  seen.error = String(error && error.stack || error);
  try {
    const page = context.pages()[0];
    if (page) await page.screenshot({ path: join(config.artifacts, "failure.png") });
  } catch (e) { /* no screenshot */ }
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(seen) + "\n");
process.exit(exitCode);
