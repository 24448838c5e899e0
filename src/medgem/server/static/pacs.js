// medgem web page, PACS panel: search an allowed PACS, list a study's series, choose the study
// (or one series) the question is about. Uses app.js's $, state, headers, errorMessage,
// clearFile and resetAnswer. Names and IDs from the PACS go in through textContent only.
"use strict";

// source: the PACS the listed studies came from (the select may have changed since).
const pacs = { source: "", study: null };

function showPacsError(text) {
  $("pacs-error").textContent = text;
  $("pacs-error").hidden = !text;
}

async function loadPacsSources() {
  let sources = [];
  try {
    const response = await fetch("/api/pacs/sources", { headers: headers() });
    if (response.ok) sources = (await response.json()).sources;
  } catch (e) { /* no PACS panel */ }
  const select = $("pacs-source");
  select.replaceChildren();
  for (const source of sources) {
    const option = document.createElement("option");
    option.value = source.source;
    option.textContent = source.where + (source.protocol === "dimse" ? " (DIMSE)" : "");
    select.appendChild(option);
  }
  $("pacs-panel").hidden = sources.length === 0;  // the operator allowed no PACS: no panel
}

async function pacsPost(path, body) {
  const token = $("pacs-token").value.trim();
  if (token) body.access_credential = token;
  const response = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!response.ok) throw new Error(await errorMessage(response));
  return response.json();
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "" : String(text);
  row.appendChild(td);
  return td;
}

function actionCell(row, label, description, onChoose, enabled) {
  const td = document.createElement("td");
  const button = document.createElement("button");
  button.type = "button";
  button.className = "choose";
  button.textContent = label;
  button.setAttribute("aria-label", description);
  button.disabled = !enabled;
  button.addEventListener("click", onChoose);
  td.appendChild(button);
  row.appendChild(td);
}

async function searchStudies(event) {
  event.preventDefault();
  showPacsError("");
  $("pacs-status").textContent = "searching…";
  $("pacs-find").disabled = true;
  const body = {
    source: $("pacs-source").value, patient_name: $("pacs-patient").value.trim(),
    patient_id: $("pacs-patient-id").value.trim(), accession: $("pacs-accession").value.trim(),
    date_from: $("pacs-from").value, date_to: $("pacs-to").value, modality: $("pacs-modality").value.trim(),
  };
  try {
    const found = await pacsPost("/api/pacs/studies", body);
    pacs.source = found.source;
    showStudies(found);
  } catch (error) {
    $("pacs-status").textContent = "";
    showPacsError(String(error.message || error));
  } finally {
    $("pacs-find").disabled = false;
  }
}

function showStudies(found) {
  const table = $("pacs-studies");
  const rows = table.querySelector("tbody");
  rows.replaceChildren();
  $("pacs-series").hidden = true;
  for (const study of found.studies) {
    const row = document.createElement("tr");
    row.dataset.study = study.study_uid;
    cell(row, study.patient_name);
    cell(row, study.patient_id);
    cell(row, study.study_date);
    cell(row, study.description);
    cell(row, study.modalities.join(", "));
    cell(row, study.series_count);
    actionCell(row, "Choose", "Choose the study of " + (study.patient_name || "an unnamed patient") + " on " + (study.study_date || "an unknown date"),
               () => chooseStudy(study, row), true);
    rows.appendChild(row);
  }
  table.hidden = found.studies.length === 0;
  const count = found.studies.length;
  $("pacs-status").textContent = count === 0 ? "No study matches." :
    count + (count === 1 ? " study" : " studies") + (found.truncated ? " (more match: narrow the search)" : "");
}

function markChosen(row) {
  for (const other of row.parentElement.querySelectorAll("tr")) other.classList.toggle("chosen", other === row);
}

function describeStudy(study) {
  const parts = [study.patient_name || "unnamed patient", study.study_date, study.description].filter(Boolean);
  return parts.join(" · ");
}

function attachReference(source, text) {
  clearFile();  // one study per question: a file attached before is dropped
  resetAnswer();
  state.dicom = { source, credential: $("pacs-token").value.trim() };
  $("pacs-chosen-text").textContent = text;
  $("pacs-chosen").hidden = false;
}

async function chooseStudy(study, row) {
  markChosen(row);
  pacs.study = study;
  attachReference(study.dicom_source, describeStudy(study) + " (whole study)");
  showPacsError("");
  const table = $("pacs-series");
  table.hidden = true;
  try {
    const found = await pacsPost("/api/pacs/series", { source: pacs.source, study_uid: study.study_uid });
    if (pacs.study !== study) return;  // another study was chosen meanwhile
    showSeries(study, found.series);
  } catch (error) {
    showPacsError(String(error.message || error));
  }
}

function showSeries(study, series) {
  const table = $("pacs-series");
  const rows = table.querySelector("tbody");
  rows.replaceChildren();
  $("pacs-series-caption").textContent = "Series of " + describeStudy(study);
  for (const item of series) {
    const row = document.createElement("tr");
    row.dataset.series = item.series_uid;
    cell(row, item.number);
    cell(row, item.modality);
    cell(row, item.body_part);
    cell(row, item.description);
    cell(row, item.instances);
    const name = "series " + (item.number === null ? item.series_uid.slice(-8) : "#" + item.number) + " " + item.modality;
    actionCell(row, item.image ? "Choose" : "Not an image", item.image ? "Choose " + name : name + " is not an image", () => {
      markChosen(row);
      attachReference(item.dicom_source, describeStudy(study) + " · " + name);
    }, item.image);
    rows.appendChild(row);
  }
  table.hidden = false;
}

function forgetStudy() {
  state.dicom = null;
  $("pacs-chosen").hidden = true;
  for (const row of document.querySelectorAll(".pacs-table tr.chosen")) row.classList.remove("chosen");
}

function wirePacs() {
  $("pacs-search").addEventListener("submit", searchStudies);
  $("pacs-clear").addEventListener("click", forgetStudy);
  document.addEventListener("medgem:file", forgetStudy);
  document.addEventListener("medgem:info", loadPacsSources);
}

document.addEventListener("DOMContentLoaded", wirePacs);
