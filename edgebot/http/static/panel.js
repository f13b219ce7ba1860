// The classroom panel: conversations kept on the board, answers streamed from /panel/api (server-sent
// events read with fetch, so the bearer token can go in a header), the robot's voice state live.
"use strict";
(function () {
  const { t, apply } = window.EB.i18n;
  const render = window.EB.render;
  const $ = (id) => document.getElementById(id);
  const TOKEN_KEY = "edgebot.token";
  const state = { conv: null, ask: null, busy: false, timers: new Set() };

  class HttpError extends Error {
    constructor(status, body) {
      super((body && body.error && body.error.message) || "HTTP " + status);
      this.status = status;
      this.code = body && body.error && body.error.code;
    }
  }

  // -- talking to the board ------------------------------------------------------------------------
  function headers(extra) {
    const h = Object.assign({ "Content-Type": "application/json" }, extra || {});
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) h.Authorization = "Bearer " + token;
    return h;
  }

  async function call(method, path, body, signal) {
    let resp;
    try {
      resp = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body),
        signal, cache: "no-store" });
    } catch (e) {
      if (e.name === "AbortError") throw e;
      throw new HttpError(0, { error: { message: t("offline"), code: "offline" } });
    }
    if (resp.status === 401) { askToken(true); throw new HttpError(401, null); }
    const type = resp.headers.get("Content-Type") || "";
    if (type.startsWith("text/event-stream")) return resp;
    const data = type.includes("json") ? await resp.json() : null;
    if (!resp.ok) throw new HttpError(resp.status, data);
    return data;
  }

  // Server-sent events from a fetch response: calls onEvent(object) for each `data:` line.
  async function readEvents(resp, onEvent) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of block.split("\n")) if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
      }
    }
  }

  function toast(text) {
    const el = $("toast");
    el.textContent = text;
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  function explain(err) {
    if (err.status === 401) return;
    const byCode = { rate_limit_exceeded: "busy", model_not_ready: "not_ready", no_speech_in: "no_speech_in",
      no_speech_out: "no_speech_out", offline: "offline" };
    toast(byCode[err.code] ? t(byCode[err.code]) : err.message);
  }

  // -- the token (beyond loopback) -----------------------------------------------------------------
  let tokenWaiters = [];
  function askToken(wrong) {
    const dialog = $("token-dialog");
    $("token-error").hidden = !(wrong && localStorage.getItem(TOKEN_KEY));
    if (!dialog.open) dialog.showModal();
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }
  $("token-form").addEventListener("submit", () => {
    localStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    const waiters = tokenWaiters;
    tokenWaiters = [];
    waiters.forEach((w) => w());
    boot();
  });

  // -- conversations -------------------------------------------------------------------------------
  async function refreshList() {
    const { conversations } = await call("GET", "/panel/api/conversations");
    const list = $("list");
    list.replaceChildren();
    for (const c of conversations) {
      const li = document.createElement("li");
      li.dataset.id = c.id;
      if (state.conv && state.conv.id === c.id) li.classList.add("current");
      const open = document.createElement("button");
      open.type = "button";
      open.className = "open";
      open.textContent = c.title || "…";
      open.addEventListener("click", () => openConversation(c.id));
      const del = document.createElement("button");
      del.type = "button";
      del.className = "delete";
      del.textContent = "×";
      del.title = t("delete");
      del.setAttribute("aria-label", t("delete"));
      del.addEventListener("click", () => {
        if (!del.classList.contains("confirm")) {
          del.classList.add("confirm");
          del.textContent = t("delete_confirm");
          setTimeout(() => { del.classList.remove("confirm"); del.textContent = "×"; }, 3000);
          return;
        }
        deleteConversation(c.id).catch(explain);
      });
      li.append(open, del);
      list.append(li);
    }
    $("list-empty").hidden = conversations.length > 0;
  }

  function clearLog() {
    for (const id of state.timers) clearInterval(id);
    state.timers.clear();
    $("log").replaceChildren();
    $("hello").hidden = false;
  }

  function newChat() {
    if (state.busy) return;
    state.conv = null;
    clearLog();
    closeSide();
    refreshList().catch(explain);
    $("input").focus();
  }

  async function openConversation(id) {
    if (state.busy) return;
    const conv = await call("GET", "/panel/api/conversations/" + id).catch(explain);
    if (!conv) return;
    state.conv = conv;
    clearLog();
    for (const ex of conv.exchanges) {
      const view = addExchange(ex.question);
      view.finish(ex);
    }
    closeSide();
    refreshList().catch(explain);
    scrollDown(true);
  }

  async function deleteConversation(id) {
    await call("DELETE", "/panel/api/conversations/" + id);
    if (state.conv && state.conv.id === id) { state.conv = null; clearLog(); }
    await refreshList();
  }

  // -- one exchange on screen ----------------------------------------------------------------------
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Follow the answer down while the reader is at the bottom; stop following once they scroll up.
  let stick = true;
  function scrollDown(force) {
    const main = $("main");
    if (force) stick = true;
    if (stick) main.scrollTop = main.scrollHeight;
  }

  function addExchange(question) {
    $("hello").hidden = true;
    const box = el("section", "exchange");
    const q = el("div", "question", question);  // the user's words: text, never HTML
    const a = el("div", "answer");
    const think = el("details", "thinking");
    const summary = el("summary", "", "");
    const thinkText = el("div", "think-text");
    think.append(summary, thinkText);
    think.hidden = true;
    const body = el("div", "markdown");
    const foot = el("div", "foot");
    a.append(think, body, foot);
    box.append(q, a);
    $("log").append(box);
    scrollDown(true);

    let md = "", thought = "", thinkStart = 0, timer = 0, dirty = false, painted = false;
    const paint = () => {
      if (!dirty) return;
      dirty = false;
      render(md, body);
      if (md && !painted) { painted = true; performance.mark("edgebot-first-paint"); }
      scrollDown(false);
    };
    const stopTimer = () => { if (timer) { clearInterval(timer); state.timers.delete(timer); timer = 0; } };
    const showThinkTime = (s, done) => {
      summary.textContent = done ? t("thought", { s }) : t("thinking", { s });
    };
    return {
      box,
      think(text) {
        if (!thinkStart) {
          thinkStart = performance.now();
          think.hidden = false;
          showThinkTime(0, false);
          timer = setInterval(() => showThinkTime(Math.round((performance.now() - thinkStart) / 1000), false), 1000);
          state.timers.add(timer);
        }
        thought += text;
        thinkText.textContent = thought;
      },
      delta(text) {
        if (!md) {
          performance.mark("edgebot-first-char");
          if (thinkStart) { stopTimer(); showThinkTime(Math.round((performance.now() - thinkStart) / 1000), true); }
        }
        md += text;
        if (!dirty) { dirty = true; requestAnimationFrame(paint); }
      },
      finish(ex) {
        stopTimer();
        if (ex.thinking && !thought) { thought = ex.thinking; thinkText.textContent = thought; think.hidden = false; }
        if (!think.hidden) showThinkTime(Math.round(ex.think_s || (thinkStart ? (performance.now() - thinkStart) / 1000 : 0)), true);
        md = ex.answer !== undefined ? ex.answer : md;
        dirty = true;
        paint();
        box.dataset.reason = ex.reason || "";
        box.dataset.raw = md;
        foot.replaceChildren();
        if (ex.reason === "cancelled") foot.append(el("span", "reason", t("cancelled")));
        if (ex.reason === "length") foot.append(el("span", "reason", t("length")));
        if (ex.reason === "error") foot.append(el("span", "reason error", t("error") + (ex.message ? ": " + ex.message : "")));
        if (md.trim()) {
          const say = el("button", "say");
          say.append(el("span", "glyph speaker"));
          say.type = "button";
          say.title = t("say");
          say.setAttribute("aria-label", t("say"));
          say.addEventListener("click", () => call("POST", "/panel/api/say", { text: md }).catch(explain));
          foot.append(say);
        }
        const st = ex.stats || {};
        if (st.completion_tokens) {
          foot.append(el("span", "stats", `${st.completion_tokens} tok` +
            (st.tokens_per_s ? ` · ${Number(st.tokens_per_s).toFixed(1)} tok/s` : "") +
            (st.cached_tokens ? ` · ${st.cached_tokens} cached` : "")));
        }
      },
    };
  }

  // -- asking --------------------------------------------------------------------------------------
  function setBusy(busy) {
    state.busy = busy;
    $("send").hidden = busy;
    $("stop").hidden = !busy;
    document.body.dataset.busy = busy ? "1" : "";
  }

  async function send(text) {
    if (state.busy || !text.trim()) return;
    setBusy(true);
    performance.clearMarks("edgebot-first-char");
    performance.clearMarks("edgebot-first-paint");
    performance.mark("edgebot-ask");
    const view = addExchange(text);
    let ended = null;
    try {
      if (!state.conv) state.conv = await call("POST", "/panel/api/conversations");
      const resp = await call("POST", `/panel/api/conversations/${state.conv.id}/ask`, { text });
      await readEvents(resp, (ev) => {
        if (ev.type === "queued") state.ask = ev.id;
        else if (ev.type === "think") view.think(ev.text);
        else if (ev.type === "delta") view.delta(ev.text);
        else if (ev.type === "end") ended = ev;
      });
    } catch (err) {
      explain(err);
    } finally {
      state.ask = null;
      view.finish(ended || { reason: "error", message: "" });
      setBusy(false);
      refreshList().catch(() => {});
      document.body.dataset.answers = String((Number(document.body.dataset.answers) || 0) + 1);
    }
  }

  async function stop() {
    if (!state.ask) return;
    try { await call("POST", `/panel/api/asks/${state.ask}/cancel`); } catch (err) { if (err.status !== 404) explain(err); }
  }

  // -- the robot's voice ---------------------------------------------------------------------------
  function showVoice(v) {
    let key = v.state;
    if (key === "idle") key = v.microphone === "ready" ? "listening" : v.microphone === "missing" ? "off" : "idle";
    const box = $("voice");
    box.dataset.state = key;
    $("voice-label").textContent = t("v_" + key);
    $("voice-heard").textContent = v.heard && (v.state === "hearing" || v.state === "thinking") ? "“" + v.heard + "”" : "";
  }

  async function followVoice() {
    for (;;) {
      try {
        const resp = await call("GET", "/panel/api/voice");
        await readEvents(resp, showVoice);
      } catch (err) {
        if (err.status === 401) return;
      }
      await new Promise((r) => setTimeout(r, 3000));  // the board restarted or the network blinked
    }
  }

  // -- layout --------------------------------------------------------------------------------------
  function closeSide() {
    document.body.classList.remove("side-open");
    $("menu").setAttribute("aria-expanded", "false");
  }

  function growInput() {
    const input = $("input");
    input.style.height = "auto";
    input.style.height = Math.min(input.scrollHeight, window.innerHeight / 4) + "px";
  }

  let booted = false;
  async function boot() {
    try {
      const info = await call("GET", "/panel/api/info");
      showVoice(info.voice);
      $("title").textContent = "edgebot";
      $("title").title = info.model;
      await refreshList();
    } catch (err) {
      explain(err);
      return;
    }
    if (booted) return;
    booted = true;
    followVoice();
    $("input").disabled = false;
    $("send").disabled = false;
    document.body.dataset.ready = "1";
    performance.mark("edgebot-interactive");
    if (!matchMedia("(pointer: coarse)").matches) $("input").focus();
  }

  function wire() {
    // The board's own kiosk is started with the token in the #fragment (deploy/panel.sh): keep it, hide it.
    const fragment = new URLSearchParams(location.hash.slice(1));
    if (fragment.get("token")) {
      localStorage.setItem(TOKEN_KEY, fragment.get("token"));
      history.replaceState(null, "", location.pathname + location.search);
    }
    const params = new URLSearchParams(location.search);
    if (params.get("kiosk") === "1") document.body.classList.add("kiosk");
    apply(document);
    $("input").disabled = true;
    $("send").disabled = true;
    $("composer").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("input").value;
      if (!text.trim() || state.busy) return;
      $("input").value = "";
      growInput();
      send(text);
    });
    $("input").addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        $("composer").requestSubmit();
      }
    });
    $("input").addEventListener("input", growInput);
    $("main").addEventListener("scroll", () => {
      const main = $("main");
      stick = main.scrollHeight - main.scrollTop - main.clientHeight < 40;
    }, { passive: true });
    $("stop").addEventListener("click", stop);
    document.addEventListener("keydown", (e) => { if (e.key === "Escape" && state.busy) stop(); });
    $("main").addEventListener("click", closeSide);  // a tap beside the list closes it (kiosk, phones)
    $("new").addEventListener("click", newChat);
    $("menu").addEventListener("click", () => {
      const open = document.body.classList.toggle("side-open");
      $("menu").setAttribute("aria-expanded", String(open));
    });
    $("talk").addEventListener("click", () => call("POST", "/panel/api/listen").then(() => toast(t("listen_sent"))).catch(explain));
    boot();
  }

  wire();
})();
