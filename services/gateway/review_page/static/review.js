// The review page's progressive layer: the forms work without it (POST + 303). With it, decisions and
// feedback are sent with fetch and the page updates in place; keyboard shortcuts; while a round runs,
// /state is polled and the page reloads when the next round's results are ready.
(function () {
  "use strict";
  var status = document.getElementById("status");
  var token = status.dataset.token;
  var flash = document.getElementById("flash");
  var help = document.getElementById("help");
  var cards = Array.prototype.slice.call(document.querySelectorAll(".result"));
  var selected = -1;
  var POLL_MS = 2500;

  function say(text, kind) {
    flash.textContent = text;
    flash.className = "notice" + (kind ? " " + kind : "");
    flash.hidden = false;
  }

  function select(i) {
    if (!cards.length) return;
    selected = Math.max(0, Math.min(cards.length - 1, i));
    cards.forEach(function (c, j) { c.classList.toggle("selected", j === selected); });
    cards[selected].focus({ preventScroll: true });
    cards[selected].scrollIntoView({ block: "nearest", behavior: "smooth" });
  }

  function current() {
    if (selected < 0) select(0);
    return cards[selected];
  }

  function showDecision(card, body) {
    card.classList.remove("d-approved", "d-rejected");
    card.classList.add("d-" + body.decision);
    var p = card.querySelector(".decision");
    p.dataset.decision = body.decision;
    p.textContent = "";
    var pill = document.createElement("span");
    pill.className = "pill r-" + body.decision;
    pill.textContent = body.decision;
    var who = document.createElement("span");
    who.className = "muted";
    who.textContent = " by " + body.decided_by_name;
    who.title = body.decided_by;
    p.appendChild(pill);
    p.appendChild(who);
    var box = card.querySelector(".reject-box");
    if (box) box.open = false;
  }

  function showReviewState(value) {
    var el = document.getElementById("review-state");
    if (!el || !value) return;
    el.className = "pill r-" + value;
    el.textContent = value.replace("_", " ");
    status.dataset.reviewState = value;
  }

  async function send(form) {
    var buttons = form.querySelectorAll("button");
    buttons.forEach(function (b) { b.disabled = true; });
    try {
      var response = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(new FormData(form)),
        headers: { Accept: "application/json" },
        credentials: "same-origin",
      });
      var body = await response.json();
      if (!response.ok) {
        say((body.title ? body.title + ": " : "") + body.message + (body.action ? " " + body.action : ""), "err");
        return null;
      }
      return body;
    } catch (err) {
      say("Could not reach the server. Check the connection and try again.", "err");
      return null;
    } finally {
      buttons.forEach(function (b) { b.disabled = false; });
    }
  }

  document.addEventListener("submit", async function (event) {
    var form = event.target;
    if (!(form instanceof HTMLFormElement)) return;
    event.preventDefault();
    var body = await send(form);
    if (!body) return;
    say(body.message, "ok");
    if (form.classList.contains("feedback")) {
      form.reset();
      status.dataset.feedback = "routing";
      poll();
      return;
    }
    var card = form.closest(".result");
    if (card) {
      showDecision(card, body);
      form.reset();
    }
    showReviewState(body.review_state);
  });

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" || target.isContentEditable);
  }

  function toggleHelp(open) {
    help.hidden = !open;
    if (open) document.getElementById("help-close").focus();
  }
  document.getElementById("help-close").addEventListener("click", function () { toggleHelp(false); });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape") {
      toggleHelp(false);
      if (typing(event.target)) event.target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var card;
    switch (event.key) {
      case "j": select(selected + 1); break;
      case "k": select(selected - 1); break;
      case "a":
        card = current();
        if (card) card.querySelector("form.approve").requestSubmit();
        break;
      case "r":
        card = current();
        if (card) {
          var box = card.querySelector(".reject-box");
          box.open = true;
          box.querySelector("input[name=reasons]").focus();
        }
        break;
      case "f": document.getElementById("feedback-text").focus(); break;
      case "?": toggleHelp(help.hidden); break;
      default: return;
    }
    event.preventDefault();
  });

  // Enter on a reason chip submits its reject form (checkboxes do not submit on Enter by default).
  document.addEventListener("keydown", function (event) {
    var t = event.target;
    if (event.key === "Enter" && t instanceof HTMLInputElement && t.type === "checkbox" && t.form) {
      event.preventDefault();
      t.form.requestSubmit();
    }
  });

  // ------------------------------------------------------------------ the next round
  var polling = false;
  // The review round whose results this page shows: a page loaded while a round runs (after a no-JS feedback
  // post, a reload) still shows the round before it, so that round's completion is "the next round ready".
  var shownRound = Number(status.dataset.round) - (status.dataset.terminal === "true" ? 0 : 1);

  function active(state) {
    var routing = state.feedback && state.feedback.status === "routing";
    return !state.terminal || routing;
  }

  function progress(state) {
    var text = document.getElementById("progress-text");
    if (!text) {
      text = document.createElement("span");
      text.id = "progress-text";
      status.appendChild(text);
    }
    var pct = Math.round(state.progress * 100);
    text.textContent = state.terminal
      ? " · working out what to change…"
      : " · round " + state.round_label + ": " + (state.current_stage || "queued") + " · " + pct + "%";
  }

  async function poll() {
    if (polling) return;
    polling = true;
    while (true) {
      var state;
      try {
        var response = await fetch("/review/" + token + "/state", { headers: { Accept: "application/json" } });
        state = await response.json();
        if (!response.ok) { say(state.title + ". " + state.message, "err"); break; }
      } catch (err) {
        await new Promise(function (r) { setTimeout(r, POLL_MS); });
        continue;
      }
      if (!active(state)) {
        var next = state.review_round !== shownRound && state.results > 0;
        location.replace("/review/" + token + (next ? "?ready=" + state.round_label : ""));
        break;
      }
      progress(state);
      await new Promise(function (r) { setTimeout(r, POLL_MS); });
    }
    polling = false;
  }

  if (status.dataset.terminal !== "true" || status.dataset.feedback === "routing") poll();
})();
