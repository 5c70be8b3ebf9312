// Rollouts: start one from the models page; pause, resume or abort one, and follow it.
// Uses console.js's `api` (JSON calls with the CSRF token, failures shown); a block keeps these
// names from clashing with its globals.
"use strict";
{
  const here = document.body.dataset.page;
  const list = (text) => text.split(",").map((s) => s.trim()).filter(Boolean);

  if (here === "models") {
    document.getElementById("roll-out")?.addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = new FormData(event.target);
      const [name, version] = form.get("model").split("/");
      const body = { stages: list(form.get("stages")) };
      const target = form.get("target");
      if (target === "group") body.group = form.get("group");
      if (target === "devices") body.devices = list(form.get("devices"));
      if (!confirm(`Promote ${name} ${version} and roll it out?`)) return;
      const url = `/api/v1/models/${encodeURIComponent(name)}/${encodeURIComponent(version)}/promote`;
      const rollout = await api("POST", url, body);
      if (rollout) location.href = `/rollouts/${rollout.id}`;
    });
  }

  if (here === "rollout") {
    const root = document.getElementById("rollout");
    const FOLLOW_MS = 5000;
    const ASK = {
      pause: "Pause? No further stage starts; devices already told carry on.",
      abort: "Abort? Devices already told go back to the version they ran before.",
    };
    // While it is going the page follows it, except while an admin is changing it.
    let follow = root.dataset.active ? setTimeout(() => location.reload(), FOLLOW_MS) : null;
    document.querySelectorAll("button.rollout-action").forEach((button) =>
      button.addEventListener("click", async () => {
        clearTimeout(follow);
        const action = button.dataset.action;
        if ((!ASK[action] || confirm(ASK[action])) &&
            (await api("POST", `/api/v1/rollouts/${root.dataset.rolloutId}/${action}`))) {
          location.reload();
        } else {
          follow = setTimeout(() => location.reload(), FOLLOW_MS);
        }
      }),
    );
  }
}
