// A data-entry page: calculations and branching logic follow what is typed (through MerciaLogic, the
// evaluator tested against the Python reference), and each entry is checked as it is left with the
// dictionary's validation (its message clears as soon as the entry is acceptable).  The server checks
// everything again on save; this only helps the person typing.
(function () {
  "use strict";
  var source = document.getElementById("crf-definition");
  var form = document.getElementById("crf-form");
  if (!source || !form || !window.MerciaLogic) return;
  var def = JSON.parse(source.textContent);
  var INTEGER = /^[+-]?\d+$/, NUMBER = /^[+-]?(\d+\.?\d*|\.\d+)$/, EMAIL = /^[^@\s]+@[^@\s]+\.[^@\s]+$/;
  var DATE = /^\d{4}-\d{2}-\d{2}$/, DATETIME = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$/;

  function inputs(f) {
    var group = document.getElementById("group-" + f.name);
    return group ? Array.prototype.slice.call(group.querySelectorAll("input, select, textarea")) : [];
  }
  function valueOf(f) {
    if (f.type === "calc") { var out = document.getElementById("field-" + f.name); return out ? out.textContent : ""; }
    var els = inputs(f);
    if (f.type === "radio" || f.type === "yesno" || f.type === "truefalse") {
      var on = els.filter(function (e) { return e.checked; })[0];
      return on ? on.value : "";
    }
    return els.length ? els[0].value.trim() : "";
  }
  function values() {
    var v = Object.assign({}, def.values);
    def.fields.forEach(function (f) {
      if (f.type === "checkbox") {
        f.columns.forEach(function (c) { var box = document.getElementById("field-" + c); if (box) v[c] = box.checked ? "1" : "0"; });
      } else if (f.type !== "descriptive") {
        v[f.name] = valueOf(f);
      }
    });
    return v;
  }
  function validDate(text, withTime) {
    var d = new Date(text.replace(" ", "T") + (withTime ? ":00Z" : "T00:00:00Z"));
    return !isNaN(d.getTime()) && d.toISOString().slice(0, 10) === text.slice(0, 10);
  }
  function limit(text, kind) {
    var now = new Date(), pad = function (n) { return (n < 10 ? "0" : "") + n; };
    if (text !== "today" && text !== "now") return text;
    var day = now.getFullYear() + "-" + pad(now.getMonth() + 1) + "-" + pad(now.getDate());
    return kind === "date_ymd" ? day : day + " " + pad(now.getHours()) + ":" + pad(now.getMinutes());
  }
  // Why a value is not acceptable (the same rules as mercia.trials.crf.dictionary.validate_value).
  function problem(f, value) {
    if (value === "" || f.type !== "text" || !f.validation) return "";
    var kind = f.validation, parsed = value;
    if (kind === "integer") { if (!INTEGER.test(value)) return "'" + value + "' is not a whole number"; parsed = Number(value); }
    else if (kind === "number") { if (!NUMBER.test(value)) return "'" + value + "' is not a number"; parsed = Number(value); }
    else if (kind === "date_ymd") { if (!DATE.test(value) || !validDate(value, false)) return "'" + value + "' is not a date YYYY-MM-DD"; }
    else if (kind === "datetime_ymd") { if (!DATETIME.test(value) || !validDate(value, true)) return "'" + value + "' is not a date and time YYYY-MM-DD HH:MM"; }
    else if (kind === "email") { if (!EMAIL.test(value)) return "'" + value + "' is not an e-mail address"; return ""; }
    else return "";
    var bounds = [["min", f.min], ["max", f.max]];
    for (var i = 0; i < bounds.length; i++) {
      if (!bounds[i][1]) continue;
      var l = limit(bounds[i][1], kind), bound = typeof parsed === "number" ? Number(l) : l;
      if (bounds[i][0] === "min" && parsed < bound) return "'" + value + "' is below the minimum " + l;
      if (bounds[i][0] === "max" && parsed > bound) return "'" + value + "' is above the maximum " + l;
    }
    return "";
  }
  function show(f, message) {
    var group = document.getElementById("group-" + f.name), slot = document.getElementById("error-" + f.name);
    if (!group || !slot) return;
    slot.textContent = message;
    group.classList.toggle("form-group--error", message !== "");
  }
  function clear(f) {
    inputs(f).forEach(function (e) {
      if (e.type === "checkbox") e.checked = false;
      else if (e.type === "radio") e.checked = e.value === "";
      else e.value = "";
    });
  }
  function calc(x) {   // a calc field's stored text, as mercia.trials.crf.logic.calculated
    var n = typeof x === "boolean" ? (x ? 1 : 0) : typeof x === "number" ? x
      : (/^[ \t]*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$/.test(x) ? Number(x) : NaN);
    return isFinite(n) ? String(n) : "";
  }
  function refresh() {
    var v = values(), record = { values: v, events: def.events, today: def.today };
    def.fields.forEach(function (f) {
      if (!f.calculation) return;
      var out = document.getElementById("field-" + f.name);
      v[f.name] = calc(MerciaLogic.evaluate(f.calculation, record));
      if (out) out.textContent = v[f.name];
    });
    def.fields.forEach(function (f) {
      var group = document.getElementById("group-" + f.name);
      if (!group) return;
      var shown = MerciaLogic.shows(f.branching, record);
      if (!shown && !group.hidden) { clear(f); show(f, ""); }
      group.hidden = !shown;
    });
  }
  // A message goes as soon as what is typed is acceptable, not when the field is left: leaving it is
  // often the press of a button below, which would move under the pointer and miss the click.
  def.fields.forEach(function (f) {
    inputs(f).forEach(function (e) {
      e.addEventListener("change", function () { show(f, problem(f, valueOf(f))); refresh(); });
      e.addEventListener("input", function () { if (!problem(f, valueOf(f))) show(f, ""); refresh(); });
    });
  });
  form.addEventListener("submit", function (event) {
    refresh();
    var first = null;
    def.fields.forEach(function (f) {
      var group = document.getElementById("group-" + f.name);
      if (!group || group.hidden) return;
      var message = problem(f, valueOf(f));
      show(f, message);
      if (message && !first) first = inputs(f)[0];
    });
    if (first) { event.preventDefault(); first.focus(); }
  });
  refresh();
})();
