// The explorer's behaviour: the slider shows one stage; a node and the lines of code computing it mark each other.
"use strict";
const data = JSON.parse(document.getElementById("data").textContent);
const slider = document.getElementById("slider");
const views = Array.from(document.querySelectorAll(".step"));
const lines = Array.from(document.querySelectorAll(".line"));
let current = 0;

function text(id, value) { document.getElementById(id).textContent = value; }

function show(k) {
  current = k;
  views.forEach((view, i) => { view.hidden = i !== k; });
  const step = data.steps[k];
  text("position", `${k + 1} / ${data.steps.length}`);
  text("label", step.label);
  text("summary", step.summary);
  const notes = document.getElementById("notes");
  notes.replaceChildren(...step.notes.map((note) => {
    const item = document.createElement("li");
    item.textContent = note;
    return item;
  }));
  clear();
}

function clear() {
  document.querySelectorAll(".selected").forEach((el) => el.classList.remove("selected"));
  document.querySelectorAll(".hit").forEach((el) => el.classList.remove("hit"));
}

function facts(node) {
  const rows = [["node", node.name], ["computes", node.computes], ["op", node.op], ["phase", node.phase],
    ["shape", node.shape], ["dtype", node.dtype], ["bytes", node.bytes], ["lives in", node.storage || "—"]];
  if (node.fused.length) rows.push(["fused", node.fused.join(", ")]);
  document.getElementById("facts").replaceChildren(...rows.flatMap(([key, value]) => {
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = key;
    dd.textContent = value;
    return [dt, dd];
  }));
}

// Mark the node of key (n12) in the current stage, and the lines computing a node of its name.
function select(key) {
  const node = data.steps[current].nodes[key];
  if (!node) return;
  clear();
  const group = views[current].querySelector(`g.node[data-key="${key}"]`);
  if (group) {
    group.classList.add("selected");
    group.scrollIntoView({ block: "nearest", inline: "nearest" });
  }
  const hits = lines.filter((line) => line.dataset.name === node.name);
  hits.forEach((line) => line.classList.add("hit"));
  if (hits.length) hits[0].scrollIntoView({ block: "center" });
  facts(node);
}

function keyOf(name) {
  const nodes = data.steps[current].nodes;
  return Object.keys(nodes).find((key) => nodes[key].name === name);
}

views.forEach((view) => {
  view.querySelectorAll("g.node").forEach((group) => {
    group.dataset.key = group.querySelector("title").textContent;
    group.addEventListener("click", () => select(group.dataset.key));
  });
});
lines.forEach((line) => {
  if (line.dataset.name) line.addEventListener("click", () => select(keyOf(line.dataset.name)));
});
slider.addEventListener("input", () => show(Number(slider.value)));
show(0);
