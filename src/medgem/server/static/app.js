// medgem web page: attach a study, ask, watch the answer stream, review it.
// No framework, no build step. All model text goes in through textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
// dicom: a PACS study or series chosen in the PACS panel (pacs.js), sent as an image_dicom part.
const state = { upload: null, uploadName: "", dicom: null, model: "", recordId: null, verdict: null, controller: null, authRequired: false, answerText: "" };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("apikey").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error.message;
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status;
}

function showError(text) {
  $("error").textContent = text;
  $("error").hidden = !text;
}

function setStatus(text, kind) {
  const s = $("status");
  s.textContent = text;
  s.className = "status " + (kind || "");
}

async function loadInfo() {
  const key = sessionStorage.getItem("medgem-key") || "";
  const response = await fetch("/api/info", key ? { headers: { Authorization: "Bearer " + key } } : {});
  if (response.status === 401) {  // keys are on: the model's details come once a key is given
    state.authRequired = true;
    $("model-name").textContent = "enter an API key";
    $("apikey-box").hidden = false;
    $("apikey").value = key;
    return;
  }
  if (!response.ok) return;
  const info = await response.json();
  state.model = info.model;
  $("model-name").textContent = info.model;
  $("model-engine").textContent = "· " + info.engine + (info.revision ? " · " + info.revision.slice(0, 12) : "");
  if (info.caveat) $("caveat-text").textContent = info.caveat;
  if (info.label) { $("demo-label").textContent = info.label; $("demo-label").hidden = false; }
  state.authRequired = info.auth_required;
  $("apikey-box").hidden = !info.auth_required;
  $("apikey").value = sessionStorage.getItem("medgem-key") || "";
  if (!info.thinking) $("think-box").hidden = true;
  if (!info.images) $("dropzone").hidden = true;
  document.dispatchEvent(new CustomEvent("medgem:info", { detail: info }));  // pacs.js looks for a PACS
}

function mimeFor(file) {
  const name = file.name.toLowerCase();
  if (name.endsWith(".dcm") || name.endsWith(".dicom")) return "application/dicom";
  if (name.endsWith(".zip")) return "application/zip";
  // Anything else keeps the browser's type, or none: the server reads the content (and says
  // what the file is not), the file's own name going with it.
  return file.type || "application/octet-stream";
}

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => {
      // Re-label the data URL: browsers give DICOM files no or a generic type.
      const payload = String(reader.result).split(",", 2)[1] || "";
      resolve("data:" + mimeFor(file) + ";base64," + payload);
    };
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function attach(file) {
  resetAnswer();  // an answer about the previous file does not belong beside this one
  setStatus("", "");
  document.dispatchEvent(new Event("medgem:file"));  // a file replaces a study chosen from the PACS
  state.upload = await readAsDataUrl(file);
  state.uploadName = file.name;
  $("file-name").textContent = file.name + " (" + Math.round(file.size / 1024) + " KB)";
  $("file-line").hidden = false;
  $("preview").hidden = true;
  const response = await fetch("/api/preview", { method: "POST", headers: headers(), body: JSON.stringify({ image: state.upload, name: state.uploadName }) });
  if (!response.ok) {
    const message = await errorMessage(response);
    clearFile();  // not sent with the next question
    showError(message.includes(file.name) ? message : "Could not read " + file.name + ": " + message);
    return;
  }
  const preview = await response.json();
  const box = $("preview-images");
  box.replaceChildren();
  box.classList.toggle("single", preview.images.length === 1);
  for (const item of preview.images) {
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = "Preprocessed image " + item.index + " of " + preview.count + " as the model sees it";
    box.appendChild(img);
  }
  let caption = "What the model sees: ";
  caption += preview.volume ? preview.volume + " volume, " + preview.count + " slices (" + preview.images.length + " shown)"
                            : preview.count + (preview.count === 1 ? " image" : " images");
  if (preview.modalities.length) caption += " · modality " + preview.modalities.join(", ");
  $("preview-caption").textContent = caption;
  $("preview").hidden = false;
}

function clearFile() {
  state.upload = null;
  state.uploadName = "";
  $("file").value = "";
  $("file-line").hidden = true;
  $("preview").hidden = true;
}

function resetAnswer() {
  showError("");
  $("answer").replaceChildren();
  $("reasoning-text").textContent = "";
  $("reasoning").hidden = true;
  $("reasoning").open = false;
  $("meta").hidden = true;
  $("answer-label").hidden = true;
  $("answer-caveat").hidden = true;
  $("review").hidden = true;
  $("review-log").replaceChildren();
  state.recordId = null;
  state.answerText = "";
  selectVerdict(null);
}

function addMeta(term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  $("meta").append(dt, dd);
}

function finish(chunk, usage) {
  const extra = chunk.medgem || {};
  state.recordId = extra.audit_id || chunk.id;
  state.answerText = $("answer").textContent;
  const cut = chunk.choices[0].finish_reason === "length";
  if (!state.answerText.trim()) {  // said, not left blank as if the page had failed to show it
    const empty = document.createElement("p");
    empty.className = "placeholder muted";
    empty.textContent = "(empty answer: the model wrote no text" + (cut ? " before the token budget ran out)" : ")");
    $("answer").appendChild(empty);
  }
  if (extra.label) { $("answer-label").textContent = extra.label; $("answer-label").hidden = false; }
  if (extra.caveat) { $("answer-caveat").textContent = extra.caveat; $("answer-caveat").hidden = false; }
  $("meta").replaceChildren();
  addMeta("Finish", cut ? "token budget reached (answer may be cut off)" : "complete");
  if (usage) addMeta("Tokens", usage.prompt_tokens + " prompt · " + usage.completion_tokens + " answer");
  if (extra.total_s !== undefined) addMeta("Time", extra.total_s.toFixed(2) + " s (first token " + extra.first_token_s.toFixed(2) + " s)");
  addMeta("Audit record", state.recordId);
  $("meta").hidden = false;
  $("review").hidden = false;
}

function askAboutUpload(question, budget) {
  const body = { question, think: $("think").checked };
  if (state.upload) { body.image = state.upload; body.name = state.uploadName; }
  if (budget > 0) body.max_tokens = budget;
  return ["/api/ask", body];
}

// A study from the PACS goes as the OpenAI chat request any client sends: the server checks
// its allowlist, fetches only the slices it needs, de-identifies them and answers (streamed).
function chatAboutStudy(question, budget) {
  const reference = { dicom_source: state.dicom.source };
  if (state.dicom.credential) reference.access_credential = state.dicom.credential;
  const body = {
    model: state.model, stream: true, stream_options: { include_usage: true }, think: $("think").checked,
    messages: [{ role: "user", content: [{ type: "image_dicom", image_dicom: reference }, { type: "text", text: question }] }],
  };
  if (budget > 0) body.max_tokens = budget;
  return ["/v1/chat/completions", body];
}

async function ask() {
  const question = $("question").value.trim();
  if (!question) { showError("Type a question first."); $("question").focus(); return; }
  resetAnswer();
  const answer = $("answer");
  answer.classList.add("live");
  setStatus("waiting for the model…", "streaming");
  $("ask").disabled = true;
  $("stop").disabled = false;
  state.controller = new AbortController();
  const budget = parseInt($("max-tokens").value, 10);
  const [url, body] = state.dicom ? chatAboutStudy(question, budget) : askAboutUpload(question, budget);
  let final = null, usage = null;
  try {
    const response = await fetch(url, { method: "POST", headers: headers(), body: JSON.stringify(body), signal: state.controller.signal });
    if (!response.ok) throw new Error(await errorMessage(response));
    setStatus("streaming", "streaming");
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          if (chunk.usage) usage = chunk.usage;
          if (!chunk.choices || !chunk.choices.length) continue;
          const delta = chunk.choices[0].delta || {};
          if (delta.reasoning_content) {
            $("reasoning").hidden = false;
            $("reasoning-text").textContent += delta.reasoning_content;
          }
          if (delta.content) answer.append(document.createTextNode(delta.content));
          if (chunk.choices[0].finish_reason) final = chunk;
        }
      }
    }
    if (!final) throw new Error("the stream ended before the answer was complete");
    finish(final, usage);
    setStatus("done", "done");
  } catch (error) {
    if (error.name === "AbortError") { setStatus("stopped", "failed"); }
    else { setStatus("failed", "failed"); showError(String(error.message || error)); }
  } finally {
    answer.classList.remove("live");
    $("ask").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

function selectVerdict(verdict) {
  state.verdict = verdict;
  for (const button of document.querySelectorAll(".verdict")) {
    button.setAttribute("aria-pressed", String(button.dataset.verdict === verdict));
  }
  const correcting = verdict === "correct";
  $("correction").hidden = !correcting;
  $("correction-label").hidden = !correcting;
  if (correcting && !$("correction").value) $("correction").value = state.answerText;
  $("save-review").disabled = !verdict;
}

async function saveReview(event) {
  event.preventDefault();
  if (!state.recordId || !state.verdict) return;
  const body = { record_id: state.recordId, verdict: state.verdict, note: $("note").value || null, reviewer: $("reviewer").value || null };
  if (state.verdict === "correct") body.correction = $("correction").value;
  localStorage.setItem("medgem-reviewer", $("reviewer").value);
  $("save-review").disabled = true;
  const response = await fetch("/api/reviews", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  $("save-review").disabled = false;
  if (!response.ok) { showError("The review was not recorded: " + await errorMessage(response)); return; }
  showError("");
  const record = await response.json();
  const item = document.createElement("li");
  const who = record.body.reviewer ? " by " + record.body.reviewer : "";
  item.textContent = "Recorded: " + record.body.verdict + who + " · " + record.created + " · " + record.id;
  $("review-log").appendChild(item);
}

function wire() {
  $("file").addEventListener("change", () => { if ($("file").files[0]) attach($("file").files[0]); });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) attach(e.dataTransfer.files[0]);
  });
  $("clear-file").addEventListener("click", clearFile);
  $("ask").addEventListener("click", ask);
  $("stop").addEventListener("click", () => state.controller && state.controller.abort());
  $("question").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) ask(); });
  for (const button of document.querySelectorAll(".verdict")) {
    button.addEventListener("click", () => selectVerdict(button.dataset.verdict));
  }
  $("review").addEventListener("submit", saveReview);
  $("apikey").addEventListener("change", () => {
    sessionStorage.setItem("medgem-key", $("apikey").value.trim());
    loadInfo();
  });
  $("reviewer").value = localStorage.getItem("medgem-reviewer") || "";
  loadInfo();
}

document.addEventListener("DOMContentLoaded", wire);
