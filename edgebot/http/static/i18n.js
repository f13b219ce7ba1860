// The panel's words in English and Chinese; the browser's language chooses (navigator.languages).
"use strict";
(function () {
  const WORDS = {
    en: {
      new_chat: "New chat", conversations: "Conversations", no_conversations: "No conversations yet.",
      hello: "Ask the robot anything. Answers are worked out here, on the board.",
      placeholder: "Ask a question…", send: "Send", stop: "Stop", talk: "Push to talk",
      thinking: "thinking… ({s} s)", thought: "thought for {s} s", say: "Say it aloud",
      delete: "Delete", delete_confirm: "Delete?", cancelled: "stopped", error: "error",
      length: "(cut off: the answer reached its length limit)",
      token_title: "This board needs its access token",
      token_help: "Type the [http] token from /etc/edgebot/edgebot.toml. This browser keeps it.",
      token_save: "Save", token_wrong: "That token was not accepted.",
      v_idle: "voice idle", v_listening: "listening", v_hearing: "hearing", v_heard: "heard", v_thinking: "thinking",
      v_speaking: "speaking", v_off: "no microphone",
      no_speech_in: "No speech-in is running on the board.", no_speech_out: "No speech-out is running on the board.",
      busy: "The robot is busy; try again in a moment.", not_ready: "The model is still loading.",
      offline: "The board cannot be reached.", listen_sent: "Listening — speak now.",
    },
    zh: {
      new_chat: "新对话", conversations: "对话", no_conversations: "还没有对话。",
      hello: "向机器人提问吧。答案就在这块板子上算出来。",
      placeholder: "输入问题…", send: "发送", stop: "停止", talk: "按下说话",
      thinking: "思考中…（{s} 秒）", thought: "思考了 {s} 秒", say: "朗读出来",
      delete: "删除", delete_confirm: "确定删除？", cancelled: "已停止", error: "出错",
      length: "（答案达到长度上限，已截断）",
      token_title: "需要这块板子的访问令牌",
      token_help: "请输入 /etc/edgebot/edgebot.toml 中的 [http] token。浏览器会记住它。",
      token_save: "保存", token_wrong: "令牌不正确。",
      v_idle: "语音空闲", v_listening: "正在听", v_hearing: "听到", v_heard: "听到", v_thinking: "思考中",
      v_speaking: "正在说话", v_off: "没有麦克风",
      no_speech_in: "板子上没有运行语音输入。", no_speech_out: "板子上没有运行语音输出。",
      busy: "机器人正忙，请稍后再试。", not_ready: "模型还在加载。",
      offline: "无法连接到板子。", listen_sent: "正在听——请说话。",
    },
  };
  const wanted = (navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"]);
  const lang = wanted.map((l) => String(l).toLowerCase().split("-")[0]).find((l) => l in WORDS) || "en";
  function t(key, vars) {
    let s = (WORDS[lang][key] || WORDS.en[key] || key);
    for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", String(v));
    return s;
  }
  function apply(root) {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of root.querySelectorAll("[data-i18n-title]")) {
      el.title = t(el.dataset.i18nTitle);
      el.setAttribute("aria-label", el.title);
    }
    for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  window.EB = window.EB || {};
  window.EB.i18n = { lang, t, apply };
})();
