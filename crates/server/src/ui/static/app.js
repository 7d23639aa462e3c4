// nightshift web UI: live updates on top of server-rendered pages. Without this script every
// page still works; with it the transcript streams and the task list refreshes.
"use strict";

function liveTranscript(list) {
  var state = document.getElementById("state");
  var source = new EventSource(list.dataset.live);
  source.onmessage = function (message) {
    if (!message.data || document.getElementById("e" + message.lastEventId)) return;
    var template = document.createElement("template");
    template.innerHTML = message.data; // rendered and escaped by the server
    var item = template.content.firstElementChild;
    if (!item) return;
    list.appendChild(item);
    var newState = item.dataset.state;
    if (newState && state) {
      state.textContent = newState;
      state.className = "badge state-" + newState;
    }
    // The clock starts with the first step after the queue, at the event's own time.
    var clock = document.getElementById("clock");
    var time = item.querySelector("time");
    if (newState && newState !== "queued" && clock && !clock.dataset.started && !clock.dataset.done && time) {
      clock.dataset.started = String(Math.floor(Date.parse(time.getAttribute("datetime")) / 1000));
    }
    if (item.dataset.kind === "ended") {
      source.close();
      if (clock) { delete clock.dataset.started; clock.dataset.done = "1"; }
      var note = document.getElementById("live-note");
      if (note) note.textContent = "The task has ended.";
      refreshSections(["section.evidence", "section.controls"]);
    }
  };
}

// Replaces parts of this page with the server's current rendering of them (evidence and
// controls change when a task ends).
function refreshSections(selectors) {
  fetch(window.location.href, { credentials: "same-origin" }).then(function (response) {
    if (response.redirected) { window.location.reload(); return undefined; }
    if (response.ok) return response.text();
  }).then(function (html) {
    if (html === undefined) return;
    var fresh = new DOMParser().parseFromString(html, "text/html");
    selectors.forEach(function (selector) {
      var now = document.querySelector(selector);
      var next = fresh.querySelector(selector);
      if (now && next) now.replaceWith(document.importNode(next, true));
    });
  }).catch(function () {});
}

function runClock(clock) {
  setInterval(function () {
    if (!clock.dataset.started) return;
    var s = Math.max(0, Math.floor(Date.now() / 1000) - Number(clock.dataset.started));
    var text = s < 60 ? s + "s" : s < 3600 ? Math.floor(s / 60) + "m " + (s % 60) + "s"
      : Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
    clock.textContent = text;
  }, 1000);
}

function refreshRows(body) {
  setInterval(function () {
    fetch(body.dataset.refresh, { credentials: "same-origin" }).then(function (response) {
      // Signed out meanwhile (the session expired or the token was revoked): show sign-in.
      if (response.redirected) { window.location.reload(); return undefined; }
      if (response.ok) return response.text();
    }).then(function (html) {
      if (html !== undefined) body.innerHTML = html; // rendered and escaped by the server
    }).catch(function () {});
  }, 2000);
}

document.addEventListener("DOMContentLoaded", function () {
  var list = document.querySelector("#events[data-live]");
  if (list && window.EventSource) liveTranscript(list);
  var clock = document.getElementById("clock");
  if (clock) runClock(clock);
  var rows = document.querySelector("#task-rows[data-refresh]");
  if (rows && window.fetch) refreshRows(rows);
});
