// Mercia web: small progressive enhancements.  Every page works without this file.
"use strict";

// Background job pages: poll the job's status and move on when it is done.
function watchJob(box) {
  const id = box.dataset.jobId;
  const message = document.getElementById("job-message");
  const bar = document.getElementById("job-progress");
  const poll = async () => {
    const response = await fetch(`/api/v1/jobs/${id}`, { credentials: "same-origin" });
    if (!response.ok) return;
    const job = await response.json();
    message.textContent = job.message;
    bar.value = job.progress;
    if (job.status === "queued" || job.status === "running") {
      setTimeout(poll, 700);
    } else {
      window.location.reload();
    }
  };
  setTimeout(poll, 500);
}

// Term autocomplete (an ARIA combobox) for HPO terms and OMOP concepts: choosing a term appends its
// id to the field named by data-target; Shift+Enter (or Shift+click) uses data-alt-target instead.
const SOURCES = {
  hpo: {
    url: (q) => `/api/v1/hpo/terms?q=${encodeURIComponent(q)}&limit=12`,
    items: (body) => body.terms.map((t) => ({ id: t.id, name: t.name, hint: t.synonym ? `${t.id} (${t.synonym})` : t.id })),
  },
  concepts: {
    url: (q, domain) => `/api/v1/concepts?q=${encodeURIComponent(q)}&standard_only=true&limit=12` +
      (domain ? `&domain=${encodeURIComponent(domain)}` : ""),
    items: (body) => body.map((c) => ({ id: String(c.concept_id), name: c.concept_name,
      hint: `${c.concept_id} · ${c.vocabulary_id} ${c.concept_code} · ${c.domain_id}` })),
  },
};

function autocomplete(input) {
  const source = SOURCES[input.dataset.autocomplete];
  const list = document.getElementById(input.getAttribute("aria-controls"));
  let items = [];
  let active = -1;
  let timer;
  const close = () => { list.hidden = true; input.setAttribute("aria-expanded", "false"); active = -1; };
  const add = (term, alternative) => {
    const targetId = alternative && input.dataset.altTarget ? input.dataset.altTarget : input.dataset.target;
    const target = document.getElementById(targetId);
    const ids = target.value.split(",").map((s) => s.trim()).filter(Boolean);
    if (!ids.includes(term.id)) ids.push(term.id);
    target.value = ids.join(", ");
    input.value = "";
    close();
    input.focus();
  };
  const highlight = () => {
    [...list.children].forEach((li, i) => li.setAttribute("aria-selected", i === active ? "true" : "false"));
    if (active >= 0) input.setAttribute("aria-activedescendant", list.children[active].id);
  };
  const search = async () => {
    const q = input.value.trim();
    if (q.length < 2) { close(); return; }
    const domainField = input.dataset.domainFrom ? document.getElementById(input.dataset.domainFrom) : null;
    const domain = domainField ? domainField.selectedOptions[0].textContent : "";
    const response = await fetch(source.url(q, domain), { credentials: "same-origin" });
    if (!response.ok) return;
    items = source.items(await response.json());
    list.replaceChildren(...items.map((term, i) => {
      const li = document.createElement("li");
      li.id = `${list.id}-${i}`;
      li.setAttribute("role", "option");
      li.textContent = `${term.name} `;
      const small = document.createElement("span");
      small.className = "hint";
      small.textContent = term.hint;
      li.appendChild(small);
      li.addEventListener("mousedown", (e) => { e.preventDefault(); add(term, e.shiftKey); });
      return li;
    }));
    list.hidden = items.length === 0;
    input.setAttribute("aria-expanded", items.length ? "true" : "false");
    active = -1;
  };
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 180); });
  input.addEventListener("keydown", (e) => {
    if (list.hidden) return;
    if (e.key === "ArrowDown") { active = Math.min(active + 1, items.length - 1); highlight(); e.preventDefault(); }
    else if (e.key === "ArrowUp") { active = Math.max(active - 1, 0); highlight(); e.preventDefault(); }
    else if (e.key === "Enter" && active >= 0) { add(items[active], e.shiftKey); e.preventDefault(); }
    else if (e.key === "Escape") { close(); }
  });
  input.addEventListener("blur", () => setTimeout(close, 150));
}

document.addEventListener("DOMContentLoaded", () => {
  const job = document.getElementById("job");
  if (job && (job.dataset.status === "queued" || job.dataset.status === "running")) watchJob(job);
  document.querySelectorAll("[data-autocomplete]").forEach(autocomplete);
  const summary = document.querySelector(".error-summary[tabindex]");
  if (summary) summary.focus();
});
