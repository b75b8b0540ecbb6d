// ilf annotate: live feedback checks, sample choice, "Run tests", live edit distance.
// Untrusted text (programs, errors, feedback) is only ever put in the page with textContent.
"use strict";
(function () {
  const cfg = document.getElementById("config");
  if (!cfg) return;
  const csrf = cfg.dataset.csrf;
  const taskKey = cfg.dataset.taskKey;
  const maxDistance = parseFloat(cfg.dataset.maxDistance);
  const maxSentences = parseInt(cfg.dataset.maxSentences, 10);
  const prompt = document.getElementById("task-prompt").value;
  const feedback = document.getElementById("feedback");
  const refinement = document.getElementById("refinement");
  const distanceEl = document.getElementById("distance");
  const meter = document.getElementById("feedback-meter");
  const warn = document.getElementById("code-warning");
  const result = document.getElementById("test-result");
  const form = document.getElementById("submit-form");
  let original = null; // the chosen sample's program

  // Levenshtein distance over code points (as Python counts characters), two rows.
  function levenshtein(a, b) {
    a = Array.from(a); b = Array.from(b);
    if (a.length < b.length) { const t = a; a = b; b = t; }
    let prev = new Uint32Array(b.length + 1), cur = new Uint32Array(b.length + 1);
    for (let j = 0; j <= b.length; j++) prev[j] = j;
    for (let i = 1; i <= a.length; i++) {
      cur[0] = i;
      const ca = a[i - 1];
      for (let j = 1; j <= b.length; j++) {
        const sub = prev[j - 1] + (ca === b[j - 1] ? 0 : 1);
        const del = prev[j] + 1, ins = cur[j - 1] + 1;
        cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
      }
      const t = prev; prev = cur; cur = t;
    }
    return prev[b.length];
  }
  // Same definition as ilf.text.normalized_edit_distance: bodies after the task prompt.
  function normalizedDistance(oldP, newP) {
    let o = oldP, n = newP;
    if (prompt && o.startsWith(prompt) && n.startsWith(prompt)) { o = o.slice(prompt.length); n = n.slice(prompt.length); }
    return levenshtein(o, n) / Math.max(1, Array.from(o).length);
  }

  function updateDistance() {
    if (original === null) { distanceEl.textContent = "edit distance –"; distanceEl.className = "distance"; return; }
    const d = normalizedDistance(original, refinement.value);
    distanceEl.textContent = "edit distance " + d.toFixed(2) + " / " + maxDistance.toFixed(2);
    distanceEl.className = "distance " + (d < maxDistance ? "ok" : "bad");
    distanceEl.dataset.value = d.toFixed(4);
  }

  function choose(id, fromUser) {
    const orig = document.getElementById("orig-" + id);
    if (!orig) return;
    const edited = original !== null && refinement.value !== original && refinement.value.trim() !== "";
    if (fromUser && edited && !window.confirm("Replace your edited refinement with a copy of this sample?")) {
      return false;
    }
    document.querySelectorAll(".sample").forEach(function (el) { el.classList.toggle("chosen", el.dataset.sample === String(id)); });
    if (fromUser || refinement.value.trim() === "") refinement.value = orig.value;
    original = orig.value;
    document.getElementById("refine-hint").textContent = "Editing a copy of the chosen sample.";
    result.hidden = true;
    updateDistance();
    return true;
  }

  document.querySelectorAll('input[name="sample"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      if (choose(radio.value, true) === false) {
        const prev = document.querySelector(".sample.chosen input[name=sample]");
        if (prev) prev.checked = true;
      }
    });
    if (radio.checked) choose(radio.value, false);
  });
  document.getElementById("reset").addEventListener("click", function () {
    const checked = document.querySelector('input[name="sample"]:checked');
    if (checked) { refinement.value = document.getElementById("orig-" + checked.value).value; updateDistance(); }
  });
  refinement.addEventListener("input", updateDistance);
  // Tab inserts four spaces in the code editor instead of leaving it; Ctrl+Enter runs the tests.
  refinement.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      document.getElementById("run-tests").click();
      return;
    }
    if (e.key === "Tab" && !e.shiftKey) {
      e.preventDefault();
      const s = refinement.selectionStart, t = refinement.selectionEnd;
      refinement.setRangeText("    ", s, t, "end");
      updateDistance();
    }
  });

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body),
    }).then(function (r) { return r.json().then(function (j) { return { ok: r.ok, body: j }; }); });
  }

  let timer = null;
  function checkFeedback() {
    post("/api/check", { feedback: feedback.value }).then(function (r) {
      if (!r.ok) return;
      const j = r.body;
      meter.textContent = j.sentences + (j.sentences === 1 ? " sentence" : " sentences") + " · " + j.words + " words";
      meter.className = j.sentences > maxSentences ? "over" : "";
      if (j.sentences > maxSentences) meter.textContent += " (aim for at most " + maxSentences + ")";
      warn.hidden = j.code_lines.length === 0;
      document.getElementById("code-lines").textContent = j.code_lines.join("\n");
    });
  }
  feedback.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(checkFeedback, 300); });
  if (feedback.value) checkFeedback();

  const runButton = document.getElementById("run-tests");
  runButton.addEventListener("click", function () {
    const checked = document.querySelector('input[name="sample"]:checked');
    result.hidden = false;
    const status = document.getElementById("result-status");
    const err = document.getElementById("result-error");
    if (!checked) { status.textContent = "choose a sample first"; status.className = "badge failed"; err.textContent = ""; return; }
    runButton.disabled = true;
    status.textContent = "running…"; status.className = "badge running"; err.textContent = "";
    document.getElementById("result-time").textContent = "";
    post("/api/run", { task_key: taskKey, sample: checked.value, refinement: refinement.value }).then(function (r) {
      runButton.disabled = false;
      if (!r.ok) { status.textContent = "error"; status.className = "badge error"; err.textContent = r.body.error || ""; return; }
      const v = r.body;
      status.textContent = v.passed ? "tests passed" : v.status;
      status.className = "badge " + (v.passed ? "passed" : v.status);
      document.getElementById("result-time").textContent = v.duration ? v.duration.toFixed(2) + " s" : "";
      let text = v.error || "";
      if (v.failed_test) text += (text ? "\n" : "") + "failing test: " + v.failed_test;
      err.textContent = text;
      err.hidden = !text;
    }).catch(function (e) { runButton.disabled = false; status.textContent = "network error"; err.textContent = String(e); });
  });

  form.addEventListener("submit", function (e) {
    if (!document.querySelector('input[name="sample"]:checked')) {
      e.preventDefault();
      result.hidden = false;
      document.getElementById("result-status").textContent = "choose a sample first";
      document.getElementById("result-status").className = "badge failed";
      return;
    }
    document.getElementById("submit").disabled = true; // one click, one POST (retries reuse the submission id)
  });
})();
