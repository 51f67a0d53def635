// likeness serve: the page. Checks dropped files one request each (POST /v1/check; sound and video
// as one-file jobs, for their progress), shows each
// verdict in plain words with the report's evidence in a sandboxed frame, records decisions.
// Every string from a file or a result goes in as text (textContent), never as markup.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf"]').content;
  const mayDecide = document.querySelector('meta[name="may-decide"]').content === "yes";
  const drop = document.getElementById("drop");
  const checks = document.getElementById("checks");
  const headers = () => (csrf ? {"X-CSRF-Token": csrf} : {});

  function badge(el, verdict) { el.textContent = verdict; el.className = "v " + verdict; }

  // Pictures: one request. Sound and video (long to decode): a one-file job whose event
  // stream tells how far decoding has got, then brings the result.
  const isLong = (file) => /^(audio|video)\//.test(file.type) ||
    /\.(mp4|m4v|mov|mkv|webm|avi|mpe?g|ts|wav|flac|mp3|ogg|oga|opus|m4a|aac|aiff?)$/i.test(file.name);

  function describe(p) {
    if (p.stage === "judging") return "matching against the index…";
    const what = p.stage === "picture" ? "pictures" : "sound";
    const of = p.duration ? " of " + Math.round(p.duration) + " s" : "";
    return "decoding " + what + ": " + Math.round(p.seconds) + " s" + of;
  }

  async function viaCheck(body) {
    const answer = await fetch("/v1/check", {method: "POST", body: body, headers: headers(), credentials: "same-origin"});
    return {ok: answer.ok, status: answer.status, id: answer.headers.get("X-Likeness-Check"), line: await answer.json()};
  }

  async function viaJob(body, status, tick) {
    const answer = await fetch("/v1/jobs", {method: "POST", body: body, headers: headers(), credentials: "same-origin"});
    const job = await answer.json();
    if (!answer.ok) return {ok: false, status: answer.status, line: job};
    return new Promise((resolve) => {
      const events = new EventSource(job.events);  // same origin: the session cookie goes with it
      events.addEventListener("progress", (ev) => { clearInterval(tick); status.textContent = describe(JSON.parse(ev.data)); });
      events.addEventListener("result", (ev) => {
        events.close();
        const line = JSON.parse(ev.data);
        resolve({ok: line.verdict !== "error" || !!ev.lastEventId, status: 200, id: ev.lastEventId || null, line: line});
      });
      events.onerror = () => { events.close(); resolve({ok: false, status: 0, line: {error: "the server's event stream broke off"}}); };
    });
  }

  async function checkOne(file) {
    const card = document.getElementById("card").content.firstElementChild.cloneNode(true);
    card.querySelector(".name").textContent = file.name;
    badge(card.querySelector(".v"), "checking");
    const status = card.querySelector(".status");
    checks.prepend(card);
    const t0 = Date.now();
    const tick = setInterval(() => { status.textContent = "checking… " + Math.round((Date.now() - t0) / 1000) + " s"; }, 500);
    const body = new FormData();
    body.append("file", file, file.name);
    let got;
    try {
      got = await (isLong(file) ? viaJob(body, status, tick) : viaCheck(body));
    } catch (e) {
      got = {ok: false, status: 0, line: {error: "the server could not be reached (" + e + ")"}};
    } finally { clearInterval(tick); }
    status.textContent = "";
    const line = got.line;
    if (!got.ok) {
      badge(card.querySelector(".v"), "error");
      card.querySelector(".plain").textContent = "Not checked: " + (line.error || got.status);
      card.dataset.verdict = "error";
      return;
    }
    const id = got.id;
    card.dataset.check = id;
    badge(card.querySelector(".v"), line.verdict);
    card.querySelector(".sha").textContent = "sha256 " + (line.sha256 || "—") + " · " + line.reason;
    const entry = await historyEntry(id);
    card.querySelector(".plain").textContent = entry ? entry.plain : line.reason;
    if (line.verdict !== "clear") {
      const frame = card.querySelector(".evidence");
      frame.src = "/v1/checks/" + encodeURIComponent(id) + "/evidence";
      frame.hidden = false;
    }
    if (mayDecide && line.sha256) {
      const form = card.querySelector(".decide");
      form.hidden = false;
      form.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => decide(form, id, b.dataset.decision)));
    }
    // set last: a card with a verdict is complete (its words, evidence and buttons are in place)
    card.dataset.verdict = line.verdict;
    refreshHistory();
  }

  async function decide(form, id, decision) {
    const why = form.elements.why;
    if (!why.value.trim()) { why.reportValidity(); form.querySelector(".done").textContent = "a reason is required"; return; }
    const answer = await fetch("/v1/decisions", {method: "POST", credentials: "same-origin",
      headers: Object.assign({"Content-Type": "application/json"}, headers()),
      body: JSON.stringify({check: id, decision: decision, why: why.value})});
    const out = await answer.json();
    form.querySelector(".done").textContent = answer.ok
      ? "recorded: " + out.recorded.decision + " by " + out.recorded.by
      : "not recorded: " + out.error;
    if (answer.ok) form.closest(".card").dataset.decision = decision;
    refreshHistory();
  }

  let latest = [];
  async function historyEntry(id) {
    await refreshHistory();
    return latest.find((e) => e.id === id);
  }

  async function refreshHistory() {
    const answer = await fetch("/v1/history", {credentials: "same-origin"});
    if (!answer.ok) return;
    latest = (await answer.json()).checks;
    const body = document.querySelector("#history tbody");
    body.replaceChildren();
    for (const e of latest) {
      const tr = document.createElement("tr");
      const d = e.decision ? e.decision.decision + " by " + e.decision.by + ": " + e.decision.why : "";
      for (const [text, cls] of [[e.time.replace("T", " ").slice(0, 19), ""], [e.name, ""], [e.verdict, "v " + e.verdict],
                                 [(e.sha256 || "—").slice(0, 16) + "…", "mono"], [e.user, ""], [d, ""]]) {
        const td = document.createElement("td");
        const span = document.createElement("span");
        span.textContent = text;
        if (cls) span.className = cls;
        td.appendChild(span);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function checkAll(files) { for (const f of files) checkOne(f); }
  document.getElementById("files").addEventListener("change", (ev) => { checkAll(ev.target.files); ev.target.value = ""; });
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => { ev.preventDefault(); drop.classList.remove("over"); checkAll(ev.dataTransfer.files); });
  refreshHistory();
})();
