// The labelling console's behaviour: keyboard, player, drawings, and calls to the JSON API.
// Hand-written, no build step, no dependencies. Every change sends the session's CSRF token.
"use strict";

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
const page = document.body.dataset.page;
// The queue's filters as a query string: carried to the next clip so "next" means the same.
const queueQuery = document.body.dataset.queue || "";
let busy = false;

function withQuery(path) {
  return queueQuery ? `${path}?${queueQuery}` : path;
}

function clipUrl(id, suffix = "") {
  return withQuery(`/clips/${encodeURIComponent(id)}${suffix}`);
}

function flash(message, isError = false) {
  const box = document.getElementById("flash");
  box.textContent = message;
  box.className = isError ? "error" : "";
  box.hidden = false;
}

function describe(detail, fallback) {
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  return fallback;
}

// One JSON call; null when it failed (the reason is shown), the parsed body otherwise.
async function api(method, url, body) {
  if (busy) return null;
  busy = true;
  try {
    const response = await fetch(url, {
      method,
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname + location.search);
      return null;
    }
    const data = response.status === 204 ? {} : await response.json().catch(() => ({}));
    if (!response.ok) {
      flash(describe(data.detail, `${response.status} ${response.statusText}`), true);
      return null;
    }
    return data;
  } catch (error) {
    flash(`The server did not answer: ${error}`, true);
    return null;
  } finally {
    busy = false;
  }
}

// --- everywhere: help, undo, sign out ------------------------------------------------------

const help = document.getElementById("help");

function toggleHelp(show = help.hidden) {
  help.hidden = !show;
}

async function undo() {
  const data = await api("POST", "/api/v1/labels/undo");
  if (!data) return;
  if (data.clips.length === 1) {
    location.href = clipUrl(data.clips[0].id);
  } else {
    flash(`Undone for ${data.clips.length} clips.`);
    setTimeout(() => location.reload(), 800);
  }
}

document.getElementById("help-button")?.addEventListener("click", () => toggleHelp());
help?.addEventListener("click", (event) => {
  if (event.target === help) toggleHelp(false);
});
document.getElementById("logout")?.addEventListener("click", async () => {
  if (await api("POST", "/api/v1/auth/logout")) location.href = "/login";
});

const pageKeys = {}; // key -> handler, filled in by the page's section below

document.addEventListener("keydown", (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || !help) return;
  // Typing in a form field is typing, not a command.
  if (event.target.closest("input, select, textarea")) return;
  let handler = null;
  if (event.key === "?") handler = () => toggleHelp();
  else if (event.key === "Escape") handler = () => toggleHelp(false);
  else if (event.key === "u") handler = undo;
  else handler = pageKeys[event.key] || null;
  if (handler) {
    event.preventDefault();
    handler();
  }
});

// --- the queue: pick clips, label them at once ------------------------------------------------

if (page === "queue") {
  const picks = [...document.querySelectorAll("input.pick")];
  const all = document.getElementById("pick-all");
  const apply = document.getElementById("bulk-apply");
  const count = () => {
    const n = picks.filter((p) => p.checked).length;
    document.getElementById("picked").textContent = `${n} selected`;
    apply.disabled = n === 0;
    all.checked = n === picks.length;
  };
  all?.addEventListener("change", () => {
    picks.forEach((p) => (p.checked = all.checked));
    count();
  });
  picks.forEach((p) => p.addEventListener("change", count));
  document.getElementById("bulk")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const label = document.getElementById("bulk-label").value || null;
    const clipIds = picks.filter((p) => p.checked).map((p) => p.value);
    const data = await api("POST", "/api/v1/labels/apply", { clip_ids: clipIds, label });
    if (data) location.reload();
  });
}

// --- one clip: spectrogram, waveform, scores, player, keys -----------------------------------

if (page === "clip") {
  const root = document.getElementById("clip");
  const clipId = root.dataset.clipId;
  const duration = Number(root.dataset.duration);
  const scores = JSON.parse(root.dataset.scores);
  const windowS = Number(root.dataset.windowS);
  const hopS = Number(root.dataset.hopS);
  const player = document.getElementById("player");
  const speed = document.getElementById("speed");
  const image = document.getElementById("spectrogram");
  const waveCanvas = document.getElementById("waveform");
  const scoreCanvas = document.getElementById("scores");
  const playhead = document.getElementById("playhead");
  const settings = document.getElementById("spectrogram-settings");
  const SETTINGS_KEY = "soundwarden.spectrogram";
  let peaks = null;

  const sized = (canvas) => {
    const ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    return canvas.getContext("2d");
  };

  // The spectrogram settings persist across clips (localStorage), so a labeller sets them once.
  function loadImage() {
    const params = new URLSearchParams(new FormData(settings));
    localStorage.setItem(SETTINGS_KEY, params.toString());
    image.src = `/api/v1/clips/${encodeURIComponent(clipId)}/spectrogram.png?${params}`;
  }
  const saved = new URLSearchParams(localStorage.getItem(SETTINGS_KEY) || "");
  for (const [name, value] of saved) {
    const field = settings.elements.namedItem(name);
    if (field && [...field.options].some((o) => o.value === value)) field.value = value;
  }
  settings.addEventListener("change", (event) => {
    loadImage();
    event.target.blur(); // back to the keyboard shortcuts
  });
  loadImage();

  function drawWaveform() {
    const ctx = sized(waveCanvas);
    ctx.clearRect(0, 0, waveCanvas.width, waveCanvas.height);
    if (!peaks) return;
    const mid = waveCanvas.height / 2;
    ctx.strokeStyle = "rgba(255, 255, 255, 0.35)";
    ctx.beginPath();
    const columns = peaks.min.length;
    for (let x = 0; x < waveCanvas.width; x++) {
      const i = Math.min(columns - 1, Math.floor((x / waveCanvas.width) * columns));
      ctx.moveTo(x + 0.5, mid - peaks.max[i] * mid);
      ctx.lineTo(x + 0.5, mid - peaks.min[i] * mid + 1);
    }
    ctx.stroke();
  }

  // Window i covers [i * hop, i * hop + window) seconds; its score is drawn at its centre.
  function drawScores(at) {
    const ctx = sized(scoreCanvas);
    const w = scoreCanvas.width;
    const h = scoreCanvas.height;
    ctx.fillStyle = "#f4f4f6";
    ctx.fillRect(0, 0, w, h);
    const x = (t) => (Math.min(Math.max(t, 0), duration) / duration) * w;
    if (scores.length === 0) {
      ctx.fillStyle = "#666";
      ctx.font = `${Math.round(h / 4)}px sans-serif`;
      ctx.fillText("No model has scored this clip.", 8, h / 2);
    } else {
      ctx.strokeStyle = "#3b528b";
      ctx.lineWidth = 2;
      ctx.beginPath();
      scores.forEach((s, i) => {
        const px = x(i * hopS + windowS / 2);
        const py = h - 2 - s * (h - 4);
        if (i === 0) ctx.moveTo(px, py);
        else ctx.lineTo(px, py);
      });
      ctx.stroke();
    }
    ctx.fillStyle = "#d62728";
    ctx.fillRect(Math.round(x(at)) - 1, 0, 2, h);
  }

  function showTime() {
    const at = player.currentTime || 0;
    playhead.style.left = `${(Math.min(at, duration) / duration) * 100}%`;
    drawScores(at);
  }

  function follow() {
    showTime();
    if (!player.paused) requestAnimationFrame(follow);
  }

  fetch(`/api/v1/clips/${encodeURIComponent(clipId)}/waveform?width=${Math.min(4096, Math.max(16, waveCanvas.clientWidth))}`)
    .then((r) => (r.ok ? r.json() : null))
    .then((data) => {
      peaks = data;
      drawWaveform();
    });
  window.addEventListener("resize", () => {
    drawWaveform();
    showTime();
  });
  player.addEventListener("play", follow);
  player.addEventListener("seeked", showTime);
  player.addEventListener("timeupdate", showTime);
  speed.addEventListener("change", () => {
    player.playbackRate = Number(speed.value);
    speed.blur();
  });
  // A click on the pictures seeks there.
  for (const target of [document.getElementById("viewer"), scoreCanvas]) {
    target.addEventListener("click", (event) => {
      const box = target.getBoundingClientRect();
      player.currentTime = ((event.clientX - box.left) / box.width) * duration;
      showTime();
    });
  }
  showTime();

  async function giveLabel(name) {
    const data = await api("POST", `/api/v1/clips/${encodeURIComponent(clipId)}/label`, { label: name });
    if (data) location.href = clipUrl(clipId, "/next");
  }

  document.querySelectorAll("button.give-label").forEach((button) =>
    button.addEventListener("click", () => giveLabel(button.dataset.label || null)),
  );
  document.querySelectorAll("button.give-label[data-key]").forEach((button) => {
    if (button.dataset.key) pageKeys[button.dataset.key] = () => giveLabel(button.dataset.label);
  });
  pageKeys[" "] = () => (player.paused ? player.play() : player.pause());
  pageKeys.ArrowLeft = () => (location.href = clipUrl(clipId, "/prev"));
  pageKeys.ArrowRight = () => (location.href = clipUrl(clipId, "/next"));
  if (root.dataset.suggestion) pageKeys.a = () => giveLabel(root.dataset.suggestion);
}

// --- labels (admin) -------------------------------------------------------------------------

function labelFields(form) {
  const data = Object.fromEntries(new FormData(form));
  return { name: data.name, key: data.key ? Number(data.key) : null, description: data.description || "" };
}

if (page === "labels") {
  document.getElementById("new-label")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await api("POST", "/api/v1/labels", labelFields(event.target))) location.reload();
  });
  document.querySelectorAll("form.edit-label").forEach((form) =>
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      // The row's fields live outside the form element (form="..." attributes).
      const url = `/api/v1/labels/${encodeURIComponent(form.dataset.label)}`;
      if (await api("PATCH", url, labelFields(form))) location.reload();
    }),
  );
  document.querySelectorAll("button.delete-label").forEach((button) =>
    button.addEventListener("click", async () => {
      if (!confirm(`Delete the label ${button.dataset.label}?`)) return;
      const url = `/api/v1/labels/${encodeURIComponent(button.dataset.label)}`;
      if (await api("DELETE", url)) location.reload();
    }),
  );
}

// --- events: mark a detection wrong -----------------------------------------------------------

if (page === "events") {
  document.querySelectorAll("button.false-positive").forEach((button) =>
    button.addEventListener("click", async () => {
      const url = `/api/v1/clips/${encodeURIComponent(button.dataset.clip)}/false-positive`;
      const clip = await api("POST", url);
      if (clip) button.replaceWith(Object.assign(document.createElement("span"), {
        className: "done",
        textContent: `false positive (${clip.label})`,
      }));
    }),
  );
}

// --- jobs: start a training job ---------------------------------------------------------------

if (page === "jobs") {
  document.getElementById("train")?.addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    const positive = form.get("positive");
    // The API takes the labels with the positive one first.
    const others = form.getAll("labels").filter((name) => name !== positive);
    const body = {
      name: form.get("name"),
      architecture: form.get("architecture"),
      epochs: Number(form.get("epochs")),
      labels: positive ? [positive, ...others] : others,
      version: form.get("version") || null,
    };
    const job = await api("POST", "/api/v1/jobs/train", body);
    if (job) location.href = `/jobs/${job.id}`;
  });
}

// --- one job: follow its progress and log until it ends --------------------------------------

if (page === "job") {
  const root = document.getElementById("job");
  const url = `/api/v1/jobs/${root.dataset.jobId}?log_lines=${root.dataset.logLines}`;
  const state = document.getElementById("job-state");
  const POLL_MS = 1000;

  async function poll() {
    const response = await fetch(url, { credentials: "same-origin" }).catch(() => null);
    if (response?.ok) {
      const job = await response.json();
      // Ended (a cancelled job once it has stopped): the page itself shows the outcome.
      if (job.finished_at) {
        location.reload();
        return;
      }
      state.textContent = job.state;
      state.className = `state ${job.state}`;
      document.getElementById("job-progress").value = job.progress;
      document.getElementById("job-percent").textContent = `${Math.round(job.progress * 100)} %`;
      document.getElementById("job-message").textContent = job.message;
      const log = document.getElementById("job-log");
      const following = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = job.log_tail;
      if (following) log.scrollTop = log.scrollHeight;
    } else if (response?.status === 401) {
      location.href = "/login?next=" + encodeURIComponent(location.pathname);
      return;
    }
    setTimeout(poll, POLL_MS); // a failed poll (server restarting) is simply tried again
  }

  document.getElementById("job-cancel")?.addEventListener("click", async (event) => {
    if (!confirm("Cancel this job?")) return;
    if (await api("POST", `/api/v1/jobs/${root.dataset.jobId}/cancel`)) {
      event.target.disabled = true;
      flash("Cancelling: the job stops at its next checkpoint.");
    }
  });
  const log = document.getElementById("job-log");
  log.scrollTop = log.scrollHeight;
  if (!root.dataset.ended) setTimeout(poll, POLL_MS);
}
