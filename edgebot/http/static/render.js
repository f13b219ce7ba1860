// Rendering an answer: maths taken out first (so Markdown does not eat its backslashes), Markdown
// to HTML with marked, sanitised with DOMPurify, then maths typeset by KaTeX and code highlighted
// by highlight.js into that sanitised DOM. Nothing from the model reaches the page unsanitised,
// and the Content-Security-Policy (no inline script) stops anything that would slip through.
"use strict";
(function () {
  const OPEN = "\uE000", CLOSE = "\uE001";  // private-use characters around a maths placeholder
  const MATH = [
    { re: /\$\$([\s\S]+?)\$\$/g, display: true },
    { re: /\\\[([\s\S]+?)\\\]/g, display: true },
    { re: /\\\(([\s\S]+?)\\\)/g, display: false },
    { re: /(^|[^\\$\w])\$(?!\s)([^$\n]+?)(?<!\s)\$(?![\w$])/g, display: false, lead: true },
  ];
  const CODE = /(```[\s\S]*?(?:```|$)|~~~[\s\S]*?(?:~~~|$)|`[^`\n]+`)/g;
  const FORBID_TAGS = ["img", "style", "form", "input", "button", "textarea", "select", "iframe", "object",
    "embed", "video", "audio", "source", "picture", "link", "meta", "base", "svg", "math"];

  function takeMaths(md, maths) {
    // Code spans and blocks keep their dollars and backslashes.
    return md.split(CODE).map((part, i) => {
      if (i % 2 === 1) return part;
      for (const m of MATH) {
        part = part.replace(m.re, (...g) => {
          const lead = m.lead ? g[1] : "";
          const tex = m.lead ? g[2] : g[1];
          maths.push({ tex, display: m.display });
          return lead + OPEN + (maths.length - 1) + CLOSE;
        });
      }
      return part;
    }).join("");
  }

  function putMaths(root, maths) {
    if (!maths.length) return;
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    const hits = [];
    for (let n = walker.nextNode(); n; n = walker.nextNode()) if (n.nodeValue.includes(OPEN)) hits.push(n);
    const split = new RegExp(OPEN + "(\\d+)" + CLOSE);
    for (const node of hits) {
      const parts = node.nodeValue.split(split);
      const frag = document.createDocumentFragment();
      parts.forEach((p, i) => {
        if (i % 2 === 0) { if (p) frag.append(p); return; }
        const m = maths[Number(p)];
        const el = document.createElement(m && m.display ? "div" : "span");
        el.className = m && m.display ? "math display" : "math";
        if (m && window.katex) {
          try {
            window.katex.render(m.tex, el, { displayMode: m.display, throwOnError: false, trust: false, strict: "ignore" });
          } catch (e) { el.textContent = m.tex; }
        } else if (m) { el.textContent = m.tex; }
        frag.append(el);
      });
      node.replaceWith(frag);
    }
  }

  let hooked = false;
  function hook() {
    if (hooked || !window.DOMPurify) return;
    hooked = true;
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("rel", "noopener noreferrer");
        node.setAttribute("target", "_blank");
      }
    });
    if (window.hljs) window.hljs.configure({ ignoreUnescapedHTML: true });
  }

  // Markdown `md` into element `el` (replacing what it held).
  function render(md, el) {
    hook();
    const maths = [];
    const text = takeMaths(md, maths);
    let html;
    if (window.marked && window.DOMPurify) {
      html = window.DOMPurify.sanitize(window.marked.parse(text, { gfm: true, breaks: false, async: false }), {
        USE_PROFILES: { html: true }, FORBID_TAGS, FORBID_ATTR: ["style", "id"],
        ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|#)/i,
      });
      el.innerHTML = html;
    } else {
      el.textContent = md;  // the libraries failed to load: plain text is always safe
      return;
    }
    putMaths(el, maths);
    if (window.hljs) {
      for (const code of el.querySelectorAll("pre code")) {
        const lang = [...code.classList].find((c) => c.startsWith("language-"));
        if (lang && !window.hljs.getLanguage(lang.slice(9))) code.classList.remove(lang);
        window.hljs.highlightElement(code);
      }
    }
  }

  window.EB = window.EB || {};
  window.EB.render = render;
  window.EB.takeMaths = takeMaths;
})();
