/* Kontor web chat: streaming answers, tool cards, approvals, forms, sources, feedback, uploads.
 *
 * Everything that comes from a model, a tool or a document is put into the page as TEXT
 * (textContent / text nodes); this file never assigns innerHTML. The CSRF token of the page
 * goes with every POST. */
(() => {
  "use strict";

  const body = document.body;
  const PREFIX = body.dataset.prefix || "/chat";
  const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  const messagesEl = $("#messages");
  const prompt = $("#prompt");
  const sendBtn = $("#send");
  const stopBtn = $("#stop");
  const state = { turn: null };
  let ICONS = {};
  try { ICONS = JSON.parse(body.dataset.icons || "{}"); } catch (e) { ICONS = {}; }

  // --- DOM helpers -------------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function icon(name) {
    const NS = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("class", "icon");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", ICONS[name] || "");
    svg.append(path);
    return svg;
  }

  function pretty(value) {
    try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
  }

  function location(c) {
    const parts = [];
    if (c.page !== null && c.page !== undefined) parts.push("p. " + c.page);
    if (c.sheet) parts.push("sheet " + c.sheet);
    if (c.section) parts.push(c.section);
    return parts.join(", ");
  }

  function nearBottom() {
    return messagesEl.scrollHeight - messagesEl.scrollTop - messagesEl.clientHeight < 160;
  }

  function scrollDown(force) {
    if (force || nearBottom()) messagesEl.scrollTop = messagesEl.scrollHeight;
  }

  async function api(method, path, data) {
    const response = await fetch(PREFIX + path, {
      method,
      credentials: "same-origin",
      headers: { "Accept": "application/json", "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: data === undefined ? undefined : JSON.stringify(data),
    });
    if (response.status === 401) {
      window.location.assign(PREFIX + "/");
      throw new Error("not signed in");
    }
    let result = {};
    try { result = await response.json(); } catch (e) { result = {}; }
    if (!response.ok) throw new Error(result.error || response.statusText || "request failed");
    return result;
  }

  // --- markdown-lite, built with DOM nodes only -----------------------------------------------

  const LIST = /^\s*([-*•]|\d+[.)])\s+/;

  function renderMarkdown(target, text, cites) {
    target.replaceChildren();
    const lines = String(text || "").replace(/\r\n/g, "\n").split("\n");
    let para = [];
    const flush = () => {
      if (!para.length) return;
      const p = el("p");
      inline(p, para.join("\n"), cites);
      target.append(p);
      para = [];
    };
    for (let i = 0; i < lines.length;) {
      const line = lines[i];
      if (/^```/.test(line)) {
        flush();
        const code = [];
        i += 1;
        while (i < lines.length && !/^```/.test(lines[i])) { code.push(lines[i]); i += 1; }
        i += 1;
        target.append(el("pre", { class: "code" }, el("code", { text: code.join("\n") })));
        continue;
      }
      const heading = /^(#{1,4})\s+(.*)$/.exec(line);
      if (heading) {
        flush();
        const h = el("h" + Math.min(6, heading[1].length + 2));
        inline(h, heading[2], cites);
        target.append(h);
        i += 1;
        continue;
      }
      if (LIST.test(line)) {
        flush();
        const list = el(/^\s*\d/.test(line) ? "ol" : "ul");
        while (i < lines.length && LIST.test(lines[i])) {
          const li = el("li");
          inline(li, lines[i].replace(LIST, ""), cites);
          list.append(li);
          i += 1;
        }
        target.append(list);
        continue;
      }
      if (!line.trim()) { flush(); i += 1; continue; }
      para.push(line);
      i += 1;
    }
    flush();
  }

  function inline(target, text, cites) {
    const pattern = /(`[^`\n]+`)|(\*\*[^*\n]+\*\*)|\[(\d{1,3})\]/g;
    let last = 0;
    let match;
    const addText = (s) => {
      s.split("\n").forEach((part, k) => {
        if (k) target.append(el("br"));
        if (part) target.append(document.createTextNode(part));
      });
    };
    while ((match = pattern.exec(text)) !== null) {
      addText(text.slice(last, match.index));
      if (match[1]) target.append(el("code", { text: match[1].slice(1, -1) }));
      else if (match[2]) target.append(el("strong", { text: match[2].slice(2, -2) }));
      else {
        const citation = cites && cites.get(Number(match[3]));
        if (citation) {
          target.append(el("button", {
            type: "button", class: "cite-ref", text: match[3],
            "aria-label": "Source " + match[3] + ": " + (citation.title || citation.document_id),
            onclick: (event) => openPanel(citation, event.currentTarget),
          }));
        } else addText(match[0]);
      }
      last = pattern.lastIndex;
    }
    addText(text.slice(last));
  }

  // --- the cited passage in the side panel ---------------------------------------------------

  const panel = $("#panel");
  let panelOpener = null;

  function metaRow(list, term, value) {
    if (value === null || value === undefined || value === "") return;
    list.append(el("dt", { text: term }), el("dd", { text: String(value) }));
  }

  async function openPanel(citation, opener) {
    if (!panel) return;
    panelOpener = opener || null;
    panel.hidden = false;
    $("#panel-title").textContent = (citation.number ? "[" + citation.number + "] " : "") +
      (citation.title || citation.document_id || "Source");
    const meta = $("#panel-meta");
    meta.replaceChildren();
    metaRow(meta, "Document", citation.source || citation.document_id);
    metaRow(meta, "Where", location(citation));
    if (typeof citation.score === "number") metaRow(meta, "Score", citation.score.toFixed(3));
    if (citation.label) metaRow(meta, "Kind", citation.label);
    const bodyEl = $("#panel-body");
    bodyEl.replaceChildren(el("mark", { class: "passage", text: citation.text || "" }));
    $("#close-panel").focus();
    if (citation.document_id && typeof citation.char_start === "number" && typeof citation.char_end === "number") {
      const query = new URLSearchParams({ document_id: citation.document_id, start: citation.char_start,
        end: citation.char_end });
      try {
        const passage = await api("GET", "/api/passage?" + query.toString());
        if (!passage.passage || !passage.passage.trim()) return;
        bodyEl.replaceChildren(
          el("span", { class: "context", text: (passage.truncated_before ? "… " : "") + passage.before }),
          el("mark", { class: "passage", text: passage.passage }),
          el("span", { class: "context", text: passage.after + (passage.truncated_after ? " …" : "") }));
        const mark = $("mark", bodyEl);
        if (mark) mark.scrollIntoView({ block: "center" });
      } catch (e) { /* the passage from the search result stays */ }
    }
  }

  function closePanel() {
    if (!panel || panel.hidden) return false;
    panel.hidden = true;
    if (panelOpener && document.contains(panelOpener)) panelOpener.focus();
    return true;
  }

  if (panel) $("#close-panel").addEventListener("click", closePanel);

  // --- chips and feedback (server-rendered and streamed answers alike) ------------------------

  function chip(citation) {
    const loc = location(citation);
    return el("button", {
      type: "button", class: "chip", "aria-label": "Source " + citation.number + ": " +
        (citation.title || citation.document_id),
      onclick: (event) => openPanel(citation, event.currentTarget),
    }, el("span", { class: "chip-n", text: citation.number }),
    el("span", { class: "chip-title", text: citation.title || citation.document_id }),
    loc ? el("span", { class: "chip-loc", text: loc }) : null);
  }

  function feedbackBlock(messageId) {
    return el("div", { class: "feedback", dataset: { messageId } },
      el("button", { type: "button", class: "fb-btn", "data-rating": "1", "aria-label": "Good answer",
        "aria-pressed": "false" }, icon("up")),
      el("button", { type: "button", class: "fb-btn", "data-rating": "-1", "aria-label": "Bad answer",
        "aria-pressed": "false" }, icon("down")));
  }

  async function giveFeedback(button) {
    const block = button.closest(".feedback");
    const messageId = block.dataset.messageId;
    const rating = Number(button.dataset.rating);
    try {
      await api("POST", "/api/messages/" + messageId + "/feedback", { rating });
    } catch (e) { showError(block, e.message); return; }
    $$(".fb-btn", block).forEach((b) => b.setAttribute("aria-pressed", String(b === button)));
    let form = $(".fb-form", block);
    if (!form) {
      const input = el("input", { type: "text", maxlength: "4000", placeholder: "Add a comment (optional)",
        "aria-label": "Comment on this answer" });
      const save = el("button", { type: "submit", class: "btn small", text: "Save" });
      form = el("form", { class: "fb-form" }, input, save);
      form.addEventListener("submit", async (event) => {
        event.preventDefault();
        const current = $(".fb-btn[aria-pressed=\"true\"]", block);
        try {
          await api("POST", "/api/messages/" + messageId + "/feedback",
            { rating: Number(current ? current.dataset.rating : rating), comment: input.value });
        } catch (e) { showError(block, e.message); return; }
        form.replaceWith(el("span", { class: "fb-thanks", role: "status", text: "Thanks for your feedback." }));
      });
      $$(".fb-thanks, .fb-comment", block).forEach((n) => n.remove());
      block.append(form);
    }
    $("input", form).focus();
  }

  function showError(anchor, message) {
    const box = el("p", { class: "error-box", role: "alert", text: message });
    anchor.after(box);
    setTimeout(() => box.remove(), 8000);
  }

  messagesEl.addEventListener("click", (event) => {
    const fb = event.target.closest(".fb-btn");
    if (fb) { giveFeedback(fb); return; }
    const c = event.target.closest(".chip[data-citation]");
    if (c) {
      try { openPanel(JSON.parse(c.dataset.citation), c); } catch (e) { /* malformed: ignore */ }
    }
  });

  // Server-rendered answers: markdown-lite with clickable [n].
  for (const article of $$(".msg.assistant")) {
    const cites = new Map();
    for (const c of $$(".chip[data-citation]", article)) {
      try { const data = JSON.parse(c.dataset.citation); cites.set(data.number, data); } catch (e) { /* skip */ }
    }
    const answer = $(".answer.md", article);
    if (answer) renderMarkdown(answer, answer.textContent, cites);
  }

  // --- tool cards -----------------------------------------------------------------------------

  class ToolCard {
    constructor(event) {
      this.callId = event.call_id;
      this.status = el("span", { class: "tool-status", text: "running" });
      this.duration = el("span", { class: "tool-duration" });
      this.bodyEl = el("div", { class: "tool-body" },
        el("h4", { text: "Arguments" }), el("pre", { class: "tool-args", text: pretty(event.arguments || {}) }));
      this.root = el("details", { class: "tool-card", dataset: { status: "running", callId: event.call_id } },
        el("summary", {}, el("span", { class: "tool-dot", "aria-hidden": "true" }),
          el("span", { class: "tool-name", text: event.tool }), this.status, this.duration),
        this.bodyEl);
    }

    setStatus(status, label) {
      this.root.dataset.status = status;
      this.status.textContent = label || status;
    }

    progress(event) {
      if (!this.bar) {
        this.bar = el("progress", { max: "100", "aria-label": "Progress of " + this.callId });
        this.barLabel = el("span");
        this.barRow = el("div", { class: "tool-progress" }, this.bar, this.barLabel);
        this.root.insertBefore(this.barRow, this.bodyEl);
      }
      if (event.total) {
        this.bar.max = event.total;
        this.bar.value = Math.min(event.progress, event.total);
      } else {
        this.bar.removeAttribute("value");
      }
      this.barLabel.textContent = event.message || (event.total ? event.progress + " / " + event.total : "");
    }

    ask(event, turnId) {
      this.root.open = true;
      this.setStatus("waiting", "waiting for your approval");
      const buttons = [
        ["allow_once", "Allow once", "btn primary small"],
        ...(event.can_remember ? [["always", "Always allow", "btn small"]] : []),
        ["deny", "Deny", "btn small"],
      ].map(([decision, label, cls]) => el("button", {
        type: "button", class: cls, text: label, dataset: { decision },
        onclick: async () => {
          buttons.forEach((b) => { b.disabled = true; });
          try {
            await api("POST", "/api/turns/" + turnId + "/approvals/" + encodeURIComponent(event.call_id),
              { decision });
          } catch (e) {
            buttons.forEach((b) => { b.disabled = false; });
            showError(this.askBox, e.message);
          }
        },
      }));
      this.askBox = el("div", { class: "ask-box approval", role: "group", "aria-label": "Approve " + event.tool },
        el("p", {}, el("strong", { text: event.destructive ? "This tool may change or delete data. " :
          "This tool needs your approval. " }), document.createTextNode(event.reason || "")),
        el("div", { class: "actions" }, ...buttons));
      this.root.append(this.askBox);
      buttons[0].focus({ preventScroll: true });
    }

    decided(event) {
      if (this.askBox) { this.askBox.remove(); this.askBox = null; }
      const words = { allow_once: "allowed once", always: "always allowed", deny: "denied" };
      this.setStatus(event.decision === "deny" ? "denied" : "running", words[event.decision] || event.decision);
    }

    finished(event) {
      if (this.askBox) { this.askBox.remove(); this.askBox = null; }
      if (this.barRow) this.barRow.remove();
      this.setStatus(event.status);
      if (typeof event.duration_s === "number") this.duration.textContent = event.duration_s.toFixed(2) + " s";
      if (event.preview) {
        this.bodyEl.append(el("h4", { text: "Result" }), el("pre", { class: "tool-preview", text: event.preview }));
      }
      if (event.error && event.error !== event.preview) {
        this.bodyEl.append(el("p", { class: "tool-error", text: event.error }));
      }
      if (event.structured_content !== null && event.structured_content !== undefined && !event.preview) {
        this.bodyEl.append(el("h4", { text: "Structured result" }),
          el("pre", { class: "tool-preview", text: pretty(event.structured_content) }));
      }
    }
  }

  // --- a streamed answer ----------------------------------------------------------------------

  class AnswerView {
    constructor(messageId, turnId) {
      this.turnId = turnId;
      this.messageId = messageId;
      this.text = "";
      this.cites = new Map();
      this.cards = new Map();
      this.tools = el("div", { class: "tool-calls" });
      this.extras = el("div", { class: "extras" });
      this.answer = el("div", { class: "answer md" });
      this.typing = el("div", { class: "typing", "aria-label": "Writing the answer" }, el("span"), el("span"),
        el("span"));
      this.chips = el("div", { class: "citations", "aria-label": "Sources" });
      this.body = el("div", { class: "msg-body" }, this.tools, this.extras, this.answer, this.typing, this.chips);
      this.root = el("article", { class: "msg assistant", "aria-label": "Answer", dataset: { messageId } },
        el("div", { class: "avatar", "aria-hidden": "true", text: "K" }), this.body);
      const welcome = $("#welcome");
      if (welcome) welcome.remove();
      messagesEl.append(this.root);
      scrollDown(true);
    }

    render() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => {
        this.frame = 0;
        const stick = nearBottom();
        renderMarkdown(this.answer, this.text, this.cites);
        if (stick) scrollDown(true);
      });
    }

    card(callId) { return this.cards.get(callId); }

    handle(type, d) {
      switch (type) {
        case "text_delta": this.text += d.text; this.render(); break;
        case "tool_call_started": {
          const card = new ToolCard(d);
          this.cards.set(d.call_id, card);
          this.tools.append(card.root);
          scrollDown();
          break;
        }
        case "approval_needed": { const c = this.card(d.call_id); if (c) c.ask(d, this.turnId); scrollDown(true); break; }
        case "approval_decided": { const c = this.card(d.call_id); if (c) c.decided(d); break; }
        case "tool_progress": { const c = this.card(d.call_id); if (c) c.progress(d); break; }
        case "tool_call_finished": { const c = this.card(d.call_id); if (c) c.finished(d); break; }
        case "citation": {
          const c = Object.assign({}, d.citation, { label: d.label });
          if (!this.cites.has(c.number)) { this.cites.set(c.number, c); this.chips.append(chip(c)); }
          this.render();
          break;
        }
        case "notice": this.extras.append(el("p", { class: "notice", text: d.message })); break;
        case "error": this.extras.append(el("p", { class: "error-box", role: "alert", text: d.message })); break;
        case "elicitation": this.elicit(d); break;
        case "elicitation_closed": case "sampling_closed": {
          const box = this.extras.querySelector('[data-ask-id="' + CSS.escape(d.id) + '"]');
          if (box) box.remove();
          break;
        }
        case "sampling_request": this.sampling(d); break;
        case "usage": this.usage = d; break;
        case "answer_complete": this.complete(d); break;
        default: break;
      }
    }

    elicit(d) {
      const form = el("form", { class: "elicit-form" });
      const schema = d.schema || {};
      const required = new Set(schema.required || []);
      const props = schema.properties || {};
      Object.entries(props).forEach(([name, spec], index) => {
        spec = spec || {};
        const id = "f-" + d.id + "-" + index;
        const label = el("label", { for: id, text: (spec.title || name) + (required.has(name) ? " *" : "") });
        let input;
        if (Array.isArray(spec.enum)) {
          input = el("select", { id, name });
          spec.enum.forEach((value, k) => {
            const names = spec.enumNames || [];
            input.append(el("option", { value: String(value), text: String(names[k] || value) }));
          });
        } else if (spec.type === "boolean") {
          input = el("input", { id, name, type: "checkbox" });
          if (spec.default === true) input.checked = true;
          const row = el("div", { class: "field check" }, input, label);
          if (spec.description) row.append(el("span", { class: "hint", text: spec.description }));
          form.append(row);
          return;
        } else {
          const type = spec.type === "number" || spec.type === "integer" ? "number" :
            ({ email: "email", uri: "url", date: "date" })[spec.format] || "text";
          input = el("input", { id, name, type, required: required.has(name) });
          if (spec.type === "integer") input.step = "1";
          if (typeof spec.minimum === "number") input.min = String(spec.minimum);
          if (typeof spec.maximum === "number") input.max = String(spec.maximum);
          if (typeof spec.maxLength === "number") input.maxLength = spec.maxLength;
          if (spec.default !== undefined) input.value = String(spec.default);
        }
        const field = el("div", { class: "field" }, label, input);
        if (spec.description) field.append(el("span", { class: "hint", text: spec.description }));
        form.append(field);
      });
      const send = async (action) => {
        const content = {};
        if (action === "accept") {
          if (!form.reportValidity()) return;
          for (const [name, spec] of Object.entries(props)) {
            const input = form.elements.namedItem(name);
            if (!input) continue;
            if ((spec || {}).type === "boolean") content[name] = input.checked;
            else if (input.value !== "") content[name] = input.value;
          }
        }
        $$("button", box).forEach((b) => { b.disabled = true; });
        try {
          await api("POST", "/api/turns/" + this.turnId + "/elicitations/" + d.id, { action, content });
        } catch (e) {
          $$("button", box).forEach((b) => { b.disabled = false; });
          showError(form, e.message);
        }
      };
      form.addEventListener("submit", (event) => { event.preventDefault(); send("accept"); });
      form.append(el("div", { class: "actions" },
        el("button", { type: "submit", class: "btn primary small", text: "Submit" }),
        el("button", { type: "button", class: "btn small", text: "Decline", onclick: () => send("decline") }),
        el("button", { type: "button", class: "btn small", text: "Cancel", onclick: () => send("cancel") })));
      const box = el("div", { class: "ask-box standalone", role: "group", "aria-label": "A form from a tool",
        dataset: { askId: d.id } }, el("p", {}, el("strong", { text: "A tool asks: " }),
        document.createTextNode(d.message || "")), form);
      this.extras.append(box);
      const first = $("input, select", form);
      if (first) first.focus({ preventScroll: true });
      scrollDown(true);
    }

    sampling(d) {
      const preview = (d.messages || []).map((m) => m.role + ": " + m.text).join("\n");
      const answer = async (approve) => {
        $$("button", box).forEach((b) => { b.disabled = true; });
        try { await api("POST", "/api/turns/" + this.turnId + "/sampling/" + d.id, { approve }); } catch (e) {
          $$("button", box).forEach((b) => { b.disabled = false; });
        }
      };
      const box = el("div", { class: "ask-box standalone", role: "group", "aria-label": "Model request of a tool",
        dataset: { askId: d.id } },
      el("p", { text: "A tool asks to use the workspace's model with this request:" }),
      el("pre", { class: "tool-preview", text: preview }),
      el("div", { class: "actions" },
        el("button", { type: "button", class: "btn primary small", text: "Allow", onclick: () => answer(true) }),
        el("button", { type: "button", class: "btn small", text: "Deny", onclick: () => answer(false) })));
      this.extras.append(box);
      scrollDown(true);
    }

    complete(d) {
      this.typing.remove();
      this.text = d.text || this.text;
      for (const c of d.citations || []) {
        if (!this.cites.has(c.number)) { this.cites.set(c.number, c); this.chips.append(chip(c)); }
      }
      if (this.frame) { cancelAnimationFrame(this.frame); this.frame = 0; }
      renderMarkdown(this.answer, this.text, this.cites);
      if (d.mode === "retrieval") {
        this.body.insertBefore(el("p", { class: "mode-label", text: "Retrieved passages · not a generated answer" }),
          this.answer);
      }
      if (d.partial) {
        this.root.classList.add("is-partial");
        this.body.insertBefore(el("p", { class: "notice", text: d.notice || "This answer is incomplete." }),
          this.chips);
      }
      const messageId = d.message_id || this.messageId;
      const fb = feedbackBlock(messageId);
      if (this.usage) {
        fb.append(el("span", { class: "usage", text: (this.usage.turn_input_tokens + this.usage.turn_output_tokens)
          .toLocaleString() + " tokens" }));
      }
      this.body.append(fb);
      scrollDown();
    }
  }

  // --- following a turn's events ----------------------------------------------------------------

  const EVENT_TYPES = ["text_delta", "tool_call_started", "approval_needed", "approval_decided", "tool_progress",
    "tool_call_finished", "citation", "usage", "notice", "error", "elicitation", "elicitation_closed",
    "sampling_request", "sampling_closed", "answer_complete"];

  function setRunning(running) {
    if (!sendBtn) return;
    sendBtn.hidden = running;
    stopBtn.hidden = !running;
    body.classList.toggle("is-running", running);
  }

  function follow(turnId, view) {
    const source = new EventSource(PREFIX + "/api/turns/" + encodeURIComponent(turnId) + "/events");
    state.turn = { id: turnId, source, view };
    setRunning(true);
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (event) => {
        let data;
        try { data = JSON.parse(event.data); } catch (e) { return; }
        view.handle(type, data);
        if (type === "answer_complete") finishTurn();
      });
    }
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED && state.turn && state.turn.source === source) {
        view.handle("error", { message: "The connection to the answer was lost. Reload the page to see it." });
        view.typing.remove();
        finishTurn();
      }
    };
  }

  function finishTurn() {
    if (state.turn) state.turn.source.close();
    state.turn = null;
    setRunning(false);
    refreshList();
    if (prompt) prompt.focus({ preventScroll: true });
  }

  async function stopTurn() {
    if (!state.turn) return;
    stopBtn.disabled = true;
    try { await api("POST", "/api/turns/" + state.turn.id + "/stop", {}); } catch (e) { /* the turn may be over */ }
    stopBtn.disabled = false;
  }

  function attachmentList(items) {
    return el("ul", { class: "msg-attachments", "aria-label": "Attached resources" },
      ...items.map((a) => el("li", { class: "att-chip", title: a.uri }, icon("doc"),
        el("span", { class: "att-name", text: a.name || a.uri }))));
  }

  function appendUser(text, attachments) {
    const welcome = $("#welcome");
    if (welcome) welcome.remove();
    const items = attachments || [];
    messagesEl.append(el("article", { class: "msg user" + (items.length ? " has-attachments" : ""),
      "aria-label": "Your question" }, items.length ? attachmentList(items) : null, el("div", { class: "bubble", text })));
    scrollDown(true);
  }

  async function send() {
    const text = prompt.value.trim();
    if (!text || state.turn) return;
    let cid = body.dataset.conversationId;
    const attachments = Array.from(attached, ([uri, name]) => ({ uri, name }));
    sendBtn.disabled = true;
    try {
      if (!cid) {
        const created = await api("POST", "/api/conversations", {});
        cid = created.id;
        body.dataset.conversationId = cid;
        history.replaceState(null, "", created.url);
      }
      const payload = { text };
      if (attachments.length) payload.attachments = attachments.map((a) => a.uri);
      const started = await api("POST", "/api/conversations/" + cid + "/messages", payload);
      prompt.value = "";
      autosize();
      attached.clear();
      renderAttachments();
      appendUser(text, attachments);
      follow(started.turn_id, new AnswerView(started.message_id, started.turn_id));
    } catch (e) {
      showError($(".composer-box"), e.message);
    } finally {
      sendBtn.disabled = false;
    }
  }

  function autosize() {
    if (!prompt) return;
    prompt.style.height = "auto";
    prompt.style.height = Math.min(prompt.scrollHeight, 220) + "px";
  }

  if (prompt) {
    $("#composer").addEventListener("submit", (event) => { event.preventDefault(); send(); });
    prompt.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    });
    prompt.addEventListener("input", autosize);
    stopBtn.addEventListener("click", stopTurn);
  }

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (document.querySelector("dialog[open]")) return;  // the dialog closes itself
    if (closeMenu(true)) { event.preventDefault(); return; }
    if (state.turn) { event.preventDefault(); stopTurn(); return; }
    if (closePanel()) return;
    closeSidebar();
  });

  // --- the conversation list ----------------------------------------------------------------------

  const list = $("#conversation-list");
  const search = $("#search");

  function convItem(c) {
    const current = body.dataset.conversationId === c.id;
    const title = c.title || "New conversation";
    return el("li", { class: "conv" + (current ? " active" : ""), dataset: { id: c.id } },
      el("a", { class: "conv-link", href: PREFIX + "/c/" + c.id, "aria-current": current ? "page" : null,
        text: title }),
      el("span", { class: "conv-actions" },
        el("button", { type: "button", class: "icon-btn conv-rename", "aria-label": "Rename “" + title + "”" },
          icon("pencil")),
        el("button", { type: "button", class: "icon-btn conv-delete", "aria-label": "Delete “" + title + "”" },
          icon("trash"))));
  }

  async function refreshList() {
    if (!list) return;
    const q = search ? search.value.trim() : "";
    try {
      const result = await api("GET", "/api/conversations" + (q ? "?q=" + encodeURIComponent(q) : ""));
      const items = result.conversations.map(convItem);
      if (!items.length) {
        items.push(el("li", { class: "conv-empty", text: q ? "No conversation matches “" + q + "”." :
          "No conversations yet." }));
      }
      list.replaceChildren(...items);
      const active = result.conversations.find((c) => c.id === body.dataset.conversationId);
      if (active && active.title) {
        $("#conversation-title").textContent = active.title;
        document.title = active.title + " · Kontor";
      }
    } catch (e) { /* keep the old list */ }
  }

  if (search) {
    let timer = 0;
    search.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(refreshList, 250); });
    search.form.addEventListener("submit", (event) => { event.preventDefault(); refreshList(); });
  }

  if (list) {
    list.addEventListener("click", async (event) => {
      const item = event.target.closest(".conv");
      if (!item) return;
      const id = item.dataset.id;
      if (event.target.closest(".conv-rename")) {
        const link = $(".conv-link", item);
        const input = el("input", { class: "conv-rename-input", value: link.textContent,
          "aria-label": "New title", maxlength: "200" });
        link.replaceWith(input);
        input.focus();
        input.select();
        let done = false;
        const finish = async (save) => {
          if (done) return;
          done = true;
          if (save && input.value.trim()) {
            try { await api("POST", "/api/conversations/" + id + "/rename", { title: input.value.trim() }); } catch (e) {
              /* shown by the refreshed list */
            }
          }
          await refreshList();
        };
        input.addEventListener("keydown", (e) => {
          if (e.key === "Enter") { e.preventDefault(); finish(true); }
          if (e.key === "Escape") { e.preventDefault(); e.stopPropagation(); finish(false); }
        });
        input.addEventListener("blur", () => finish(true));
        return;
      }
      const del = event.target.closest(".conv-delete");
      if (del) {
        if (!del.classList.contains("confirm")) {
          del.classList.add("confirm");
          del.textContent = "Delete?";
          del.setAttribute("aria-label", "Press again to delete this conversation");
          setTimeout(() => {
            if (document.contains(del)) { del.classList.remove("confirm"); del.replaceChildren(icon("trash")); }
          }, 4000);
          return;
        }
        try { await api("POST", "/api/conversations/" + id + "/delete", {}); } catch (e) { return; }
        if (body.dataset.conversationId === id) { window.location.assign(PREFIX + "/"); return; }
        item.remove();
      }
    });
  }

  // --- sidebar on small screens -----------------------------------------------------------------

  const sidebar = $("#sidebar");
  const scrim = $("#scrim");

  function closeSidebar() {
    if (!sidebar || !sidebar.classList.contains("open")) return;
    sidebar.classList.remove("open");
    scrim.hidden = true;
    $("#open-sidebar").focus();
  }

  if (sidebar) {
    $("#open-sidebar").addEventListener("click", () => {
      sidebar.classList.add("open");
      scrim.hidden = false;
      $("#close-sidebar").focus();
    });
    $("#close-sidebar").addEventListener("click", closeSidebar);
    scrim.addEventListener("click", closeSidebar);
  }

  // --- settings ----------------------------------------------------------------------------------

  const dialog = $("#settings");

  async function loadSettings() {
    const settings = await api("GET", "/api/settings");
    $("#settings-model").textContent = settings.model;
    $("#ask-every-tool").checked = Boolean(settings.ask_every_tool);
    const approvals = $("#approval-list");
    const rows = settings.approvals.map((tool) => el("li", {}, el("span", { text: tool }),
      el("button", { type: "button", class: "btn small", text: "Forget", "aria-label": "Forget " + tool,
        onclick: async () => {
          await api("POST", "/api/settings/approvals/forget", { tool });
          loadSettings();
        } })));
    approvals.replaceChildren(...(rows.length ? rows : [el("li", { class: "empty", text: "None yet." })]));
    $("#admin-section").hidden = !settings.admin;
    if (settings.admin) {
      const rules = Object.entries(settings.admin_rules || {}).map(([key, rule]) => el("li", {},
        el("span", { text: key + " → " + rule.replace("_", " ") }),
        el("button", { type: "button", class: "btn small", text: "Remove", "aria-label": "Remove the rule for " + key,
          onclick: async () => { await api("POST", "/api/admin/rules", { key, rule: null }); loadSettings(); } })));
      $("#rule-list").replaceChildren(...(rules.length ? rules : [el("li", { class: "empty", text: "No rules." })]));
    }
  }

  async function loadRecorded() {
    const list = $("#recorded-list");
    let data;
    try {
      data = await api("GET", "/api/recorded");
    } catch (e) {
      list.replaceChildren(el("li", { class: "empty", text: e.message }));
      return;
    }
    const rows = data.interactions.map((item) => el("li", {},
      el("span", { text: item.question }),
      el("button", { type: "button", class: "btn small", text: "Delete", "aria-label": "Delete: " + item.question,
        onclick: async () => { await api("POST", "/api/recorded/delete", { ids: [item.id] }); loadRecorded(); } })));
    list.replaceChildren(...(rows.length ? rows : [el("li", { class: "empty", text: "Nothing recorded." })]));
  }

  if (dialog) {
    $("#open-settings").addEventListener("click", async () => {
      dialog.showModal();
      try { await loadSettings(); } catch (e) { /* the dialog shows what the page knows */ }
      loadRecorded();
    });
    $("#recorded-delete-all").addEventListener("click", async () => {
      try {
        await api("POST", "/api/recorded/delete", { all: true });
        loadRecorded();
      } catch (e) { showError($("#recorded-delete-all"), e.message); }
    });
    $("#ask-every-tool").addEventListener("change", async (event) => {
      try { await api("POST", "/api/settings", { ask_every_tool: event.target.checked }); } catch (e) {
        event.target.checked = !event.target.checked;
      }
    });
    $("#rule-save").addEventListener("click", async () => {
      const key = $("#rule-key").value.trim();
      if (!key) return;
      try {
        await api("POST", "/api/admin/rules", { key, rule: $("#rule-value").value || null });
        $("#rule-key").value = "";
        loadSettings();
      } catch (e) { showError($("#rule-save"), e.message); }
    });
  }

  // --- upload ----------------------------------------------------------------------------------------

  const fileInput = $("#file-input");
  const uploadBox = $("#upload-status");

  function uploadState(label, percent, kind) {
    uploadBox.hidden = false;
    uploadBox.classList.toggle("done", kind === "done");
    uploadBox.classList.toggle("failed", kind === "failed");
    $("#upload-label").textContent = label;
    const bar = $("#upload-progress");
    if (percent === null) bar.removeAttribute("value");
    else bar.value = Math.max(0, Math.min(100, percent));
    if (kind) setTimeout(() => { uploadBox.hidden = true; }, kind === "done" ? 6000 : 12000);
  }

  function upload(file) {
    const limit = Number(body.dataset.maxUpload || 0);
    if (limit && file.size > limit) {
      uploadState(file.name + " is larger than the upload limit (" + Math.round(limit / 1048576) + " MB).", 0,
        "failed");
      return;
    }
    const xhr = new XMLHttpRequest();
    let seen = 0;
    let finished = false;
    const handleLines = () => {
      const text = xhr.responseText;
      const end = text.lastIndexOf("\n");
      if (end < seen) return;
      const lines = text.slice(seen, end).split("\n");
      seen = end + 1;
      for (const line of lines) {
        if (!line.trim()) continue;
        let item;
        try { item = JSON.parse(line); } catch (e) { continue; }
        if (item.done) {
          finished = true;
          if (item.ok) uploadState("✓ " + file.name + " was added to your documents.", 100, "done");
          else uploadState("✗ " + (item.error || item.message || "The upload failed."), 100, "failed");
        } else if (typeof item.progress === "number") {
          const share = item.total ? item.progress / item.total : 0.5;
          uploadState("Ingesting " + file.name + (item.message ? ": " + item.message : "…"), 50 + 50 * share);
        } else if (item.received) {
          uploadState("Ingesting " + file.name + "…", 50);
        }
      }
    };
    xhr.open("POST", PREFIX + "/api/upload");
    xhr.setRequestHeader("X-CSRF-Token", CSRF);
    xhr.setRequestHeader("X-File-Name", encodeURIComponent(file.name));
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) uploadState("Uploading " + file.name + "…", 50 * event.loaded / event.total);
    });
    xhr.addEventListener("progress", handleLines);
    xhr.addEventListener("load", () => {
      handleLines();
      if (xhr.status >= 400) {
        let message = "The upload failed.";
        try { message = JSON.parse(xhr.responseText).error || message; } catch (e) { /* not JSON */ }
        uploadState("✗ " + message, 100, "failed");
      } else if (!finished) uploadState("✗ The upload ended without an answer.", 100, "failed");
    });
    xhr.addEventListener("error", () => uploadState("✗ The upload failed (network).", 100, "failed"));
    uploadState("Uploading " + file.name + "…", 0);
    xhr.send(file);
  }

  if (fileInput) {
    $("#attach").addEventListener("click", () => fileInput.click());
    fileInput.addEventListener("change", () => {
      const file = fileInput.files && fileInput.files[0];
      if (file) upload(file);
      fileInput.value = "";
    });
  }

  // --- the "+" menu: attach a resource, use a prompt ------------------------------------------------

  const moreBtn = $("#more");
  const moreMenu = $("#more-menu");
  const chipsEl = $("#attachment-chips");
  const MAX_ATTACHMENTS = 5;
  const attached = new Map();  // uri -> the name shown; the server reads each when the message is sent

  function closeMenu(focusButton) {
    if (!moreMenu || moreMenu.hidden) return false;
    moreMenu.hidden = true;
    moreBtn.setAttribute("aria-expanded", "false");
    if (focusButton) moreBtn.focus();
    return true;
  }

  function openMenu() {
    moreMenu.hidden = false;
    moreBtn.setAttribute("aria-expanded", "true");
    $(".menu-item", moreMenu).focus();
  }

  function renderAttachments() {
    if (!chipsEl) return;
    const items = Array.from(attached, ([uri, name]) => el("li", { class: "att-chip", title: uri }, icon("doc"),
      el("span", { class: "att-name", text: name }),
      el("button", { type: "button", class: "att-remove", "aria-label": "Remove the attached resource " + name,
        onclick: () => { attached.delete(uri); renderAttachments(); prompt.focus(); } }, icon("close"))));
    chipsEl.replaceChildren(...items);
    chipsEl.hidden = !items.length;
  }

  // a dialog: Esc (native), the close button and a click on the backdrop close it; the focus goes back
  // to the "+" button, or to the question when something was chosen
  function setupDialog(dialog) {
    $(".dialog-close", dialog).addEventListener("click", () => dialog.close());
    dialog.addEventListener("click", (event) => { if (event.target === dialog) dialog.close(); });
    dialog.addEventListener("close", () => {
      const chosen = dialog.dataset.chosen === "1";
      dialog.dataset.chosen = "";
      (chosen ? prompt : moreBtn).focus();
    });
  }

  function choose(dialog) {
    dialog.dataset.chosen = "1";
    dialog.close();
  }

  // arrows move between the buttons of a picker list
  function listKeys(listEl, before) {
    listEl.addEventListener("keydown", (event) => {
      const items = $$(".picker-item", listEl);
      const at = items.indexOf(document.activeElement);
      if (at < 0) return;
      let next = null;
      if (event.key === "ArrowDown") next = items[at + 1];
      else if (event.key === "ArrowUp") next = items[at - 1] || before;
      else if (event.key === "Home") next = items[0];
      else if (event.key === "End") next = items[items.length - 1];
      if (next) { event.preventDefault(); next.focus(); }
    });
  }

  function pickerItem(title, meta, description, onclick, iconName) {
    return el("li", {}, el("button", { type: "button", class: "picker-item", onclick },
      el("span", { class: "picker-title" }, icon(iconName), el("span", { text: title })),
      el("span", { class: "picker-meta", text: meta }),
      description ? el("span", { class: "picker-desc", text: description }) : null));
  }

  function formError(form, message) {
    const old = $(".error-box", form);
    if (old) old.remove();
    form.append(el("p", { class: "error-box", role: "alert", text: message }));
  }

  // a field of a generated form (labelled; required marked, also for screen readers)
  function field(form, id, label, required, description, value) {
    const hintId = description ? id + "-hint" : null;
    const input = el("input", { id, name: id, type: "text", required, "aria-required": required ? "true" : null,
      "aria-describedby": hintId, maxlength: "10000", value: value || null });
    form.append(el("div", { class: "field" },
      el("label", { for: id }, el("span", { text: label }),
        required ? el("span", { class: "required", "aria-hidden": "true", text: " *" }) : null,
        required ? el("span", { class: "sr-only", text: " (required)" }) : null),
      input, description ? el("span", { class: "hint", id: hintId, text: description }) : null));
    return input;
  }

  // --- attach a resource

  const resourceDialog = $("#resource-dialog");
  const resourceFilter = $("#resource-filter");
  const resourceList = $("#resource-list");
  const resourceStatus = $("#resource-status");
  const templateForm = $("#template-form");
  let resources = { resources: [], templates: [] };

  function attachResource(uri, name) {
    if (!attached.has(uri) && attached.size >= MAX_ATTACHMENTS) {
      resourceStatus.textContent = "At most " + MAX_ATTACHMENTS + " resources can be attached to a message.";
      return false;
    }
    attached.set(uri, name || uri);
    renderAttachments();
    return true;
  }

  // RFC 6570 templates, the common operators: {var} {+var} {/var} {.var} {#var} {?a,b} {&a} {;a}
  const TEMPLATE_VAR = /\{([+#./;?&]?)([^}]+)\}/g;

  function templateNames(template) {
    const names = [];
    for (const match of template.matchAll(TEMPLATE_VAR)) {
      for (const name of match[2].split(",")) {
        const clean = name.replace(/[*]$|:\d+$/, "").trim();
        if (clean && !names.includes(clean)) names.push(clean);
      }
    }
    return names;
  }

  function expandTemplate(template, values) {
    return template.replace(TEMPLATE_VAR, (_, op, spec) => {
      const names = spec.split(",").map((n) => n.replace(/[*]$|:\d+$/, "").trim())
        .filter((n) => values[n] !== undefined && values[n] !== "");
      if (!names.length) return "";
      const enc = (v) => (op === "+" || op === "#" ? encodeURI(v) : encodeURIComponent(v));
      if (op === "?" || op === "&" || op === ";") {
        const sep = op === ";" ? ";" : "&";
        return (op === "&" ? "&" : op) + names.map((n) => n + "=" + enc(values[n])).join(sep);
      }
      const joined = names.map((n) => enc(values[n])).join(",");
      return ({ "": "", "+": "", "#": "#", ".": ".", "/": "/" })[op] + joined;
    });
  }

  function showResourceList() {
    templateForm.hidden = true;
    templateForm.replaceChildren();
    resourceFilter.hidden = false;
    resourceList.hidden = false;
    renderResources();
    resourceFilter.focus();
  }

  function renderResources() {
    const q = resourceFilter.value.trim().toLowerCase();
    const match = (item) => !q || [item.name, item.title, item.uri, item.uriTemplate, item.description]
      .some((v) => v && String(v).toLowerCase().includes(q));
    const rows = [];
    for (const r of resources.resources.filter(match)) {
      const name = r.title || r.name || r.uri;
      rows.push(pickerItem(name, r.uri + (r.mimeType ? " · " + r.mimeType : "") + (attached.has(r.uri) ?
        " · attached" : ""), r.description, () => { if (attachResource(r.uri, name)) choose(resourceDialog); }, "doc"));
    }
    for (const t of resources.templates.filter(match)) {
      rows.push(pickerItem(t.title || t.name || t.uriTemplate, t.uriTemplate + " · fill in to attach",
        t.description, () => fillTemplate(t), "pencil"));
    }
    resourceList.replaceChildren(...rows);
    resourceStatus.textContent = rows.length ? "" : (q ? "No resource matches “" + resourceFilter.value.trim() +
      "”." : "No resources are available to you.");
  }

  function fillTemplate(t) {
    resourceFilter.hidden = true;
    resourceList.hidden = true;
    resourceStatus.textContent = "";
    templateForm.replaceChildren(el("h3", { class: "picker-heading", text: t.title || t.name || t.uriTemplate }),
      el("p", { class: "hint", text: t.uriTemplate }));
    const inputs = templateNames(t.uriTemplate).map((name, i) => [name,
      field(templateForm, "template-var-" + i, name, true, null)]);
    templateForm.append(el("div", { class: "actions" },
      el("button", { type: "button", class: "btn small", onclick: showResourceList }, icon("back"), "Back"),
      el("button", { type: "submit", class: "btn primary small", text: "Attach" })));
    templateForm.onsubmit = (event) => {
      event.preventDefault();
      if (!templateForm.reportValidity()) return;
      const values = Object.fromEntries(inputs.map(([name, input]) => [name, input.value.trim()]));
      const uri = expandTemplate(t.uriTemplate, values);
      if (attachResource(uri, uri)) choose(resourceDialog);
      else formError(templateForm, resourceStatus.textContent);
    };
    templateForm.hidden = false;
    (inputs.length ? inputs[0][1] : $("button[type=submit]", templateForm)).focus();
  }

  async function openResources() {
    closeMenu(false);
    resourceFilter.value = "";
    resourceList.replaceChildren();
    resourceDialog.showModal();
    showResourceList();
    resourceStatus.textContent = "Loading the resources…";
    try {
      resources = await api("GET", "/api/resources");
    } catch (e) {
      resourceStatus.textContent = e.message;
      return;
    }
    renderResources();
  }

  // --- use a prompt

  const promptDialog = $("#prompt-dialog");
  const promptList = $("#prompt-list");
  const promptStatus = $("#prompt-status");
  const promptForm = $("#prompt-form");

  function showPromptList() {
    promptForm.hidden = true;
    promptForm.replaceChildren();
    promptList.hidden = false;
    const first = $(".picker-item", promptList);
    if (first) first.focus();
  }

  function fillPrompt(p) {
    promptList.hidden = true;
    promptStatus.textContent = "";
    const args = p.arguments || [];
    promptForm.replaceChildren(el("h3", { class: "picker-heading", text: p.title || p.name }),
      p.description ? el("p", { class: "hint", text: p.description }) : null,
      args.some((a) => a.required) ? el("p", { class: "hint", text: "Fields marked * are required." }) : null);
    const inputs = args.map((a, i) => [a.name, field(promptForm, "prompt-arg-" + i, a.title || a.name,
      Boolean(a.required), a.description)]);
    const submit = el("button", { type: "submit", class: "btn primary small", text: "Use prompt" });
    promptForm.append(el("div", { class: "actions" },
      el("button", { type: "button", class: "btn small", onclick: showPromptList }, icon("back"), "Back"), submit));
    promptForm.onsubmit = async (event) => {
      event.preventDefault();
      if (!promptForm.reportValidity()) return;
      const values = {};
      for (const [name, input] of inputs) if (input.value.trim()) values[name] = input.value;
      submit.disabled = true;
      try {
        const result = await api("POST", "/api/prompts/get", { name: p.name, arguments: values });
        prompt.value = result.text;
        autosize();
        choose(promptDialog);
      } catch (e) {
        formError(promptForm, e.message);
      } finally {
        submit.disabled = false;
      }
    };
    promptForm.hidden = false;
    (inputs.length ? inputs[0][1] : submit).focus();
  }

  async function openPrompts() {
    closeMenu(false);
    promptList.replaceChildren();
    promptDialog.showModal();
    showPromptList();
    promptStatus.textContent = "Loading the prompts…";
    let data;
    try {
      data = await api("GET", "/api/prompts");
    } catch (e) {
      promptStatus.textContent = e.message;
      return;
    }
    promptList.replaceChildren(...data.prompts.map((p) => {
      const count = (p.arguments || []).length;
      return pickerItem(p.title || p.name, p.name + " · " + (count === 1 ? "1 argument" : count + " arguments"),
        p.description, () => fillPrompt(p), "prompt");
    }));
    promptStatus.textContent = data.prompts.length ? "" : "No prompts are available to you.";
    const first = $(".picker-item", promptList);
    if (first && !promptList.hidden) first.focus();
  }

  if (moreBtn) {
    moreBtn.addEventListener("click", () => (moreMenu.hidden ? openMenu() : closeMenu(true)));
    moreMenu.addEventListener("keydown", (event) => {
      const items = $$(".menu-item", moreMenu);
      const at = items.indexOf(document.activeElement);
      if (event.key === "Escape") { event.preventDefault(); event.stopPropagation(); closeMenu(true); return; }
      if (event.key === "Tab") { closeMenu(false); return; }
      let next = null;
      if (event.key === "ArrowDown") next = items[(at + 1) % items.length];
      else if (event.key === "ArrowUp") next = items[(at - 1 + items.length) % items.length];
      else if (event.key === "Home") next = items[0];
      else if (event.key === "End") next = items[items.length - 1];
      if (next) { event.preventDefault(); next.focus(); }
    });
    moreMenu.parentElement.addEventListener("focusout", (event) => {
      if (!moreMenu.parentElement.contains(event.relatedTarget)) closeMenu(false);
    });
    document.addEventListener("click", (event) => {
      if (!moreMenu.parentElement.contains(event.target)) closeMenu(false);
    });
    $("#menu-resource").addEventListener("click", openResources);
    $("#menu-prompt").addEventListener("click", openPrompts);
    setupDialog(resourceDialog);
    setupDialog(promptDialog);
    resourceFilter.addEventListener("input", renderResources);
    resourceFilter.addEventListener("keydown", (event) => {
      if (event.key === "ArrowDown" || event.key === "Enter") {
        const first = $(".picker-item", resourceList);
        if (first) { event.preventDefault(); first.focus(); }
      }
    });
    listKeys(resourceList, resourceFilter);
    listKeys(promptList, null);
  }

  // --- a turn that was running when the page loaded --------------------------------------------

  if (body.dataset.turnId) {
    follow(body.dataset.turnId, new AnswerView(body.dataset.turnMessageId, body.dataset.turnId));
  }
  autosize();
  scrollDown(true);
})();
