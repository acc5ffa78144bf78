// Evaluates the branching-logic / calculation AST made by mercia.trials.crf.logic.parse, in the browser,
// with the same value rules as the Python reference (see that module's docstring).  No eval, no Function.
(function (root) {
  "use strict";
  var NUMERIC = /^[ \t]*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?[ \t]*$/;
  var DATE = /^([0-9]{4})-([0-9]{2})-([0-9]{2})(?: ([0-9]{2}):([0-9]{2})(?::([0-9]{2}))?)?$/;
  var UNITS = { y: 365.2425 * 86400, M: 30.44 * 86400, d: 86400, h: 3600, m: 60, s: 1 };

  function toNumber(v) {
    if (typeof v === "boolean") return v ? 1 : 0;
    if (typeof v === "number") return v;
    return NUMERIC.test(v) ? Number(v.trim()) : NaN;
  }
  function truthy(v) { var n = toNumber(v); return !isNaN(n) && n !== 0; }
  function codePointCompare(a, b) {  // Python compares strings by code point, not UTF-16 unit
    var x = Array.from(a), y = Array.from(b);
    for (var i = 0; i < Math.min(x.length, y.length); i++) {
      var d = x[i].codePointAt(0) - y[i].codePointAt(0);
      if (d !== 0) return d;
    }
    return x.length - y.length;
  }
  function compare(op, a, b) {
    var na = toNumber(a), nb = toNumber(b);
    if (!isNaN(na) && !isNaN(nb)) {
      return { "=": na === nb, "<>": na !== nb, "<": na < nb, ">": na > nb, "<=": na <= nb, ">=": na >= nb }[op];
    }
    var bothText = typeof a === "string" && typeof b === "string";
    if (op === "=" || op === "<>") { var eq = bothText && a === b; return op === "=" ? eq : !eq; }
    if (!bothText || a === "" || b === "") return false;
    var c = codePointCompare(a, b);
    return { "<": c < 0, ">": c > 0, "<=": c <= 0, ">=": c >= 0 }[op];
  }
  function finite(x) { return isFinite(x) ? x : NaN; }
  function pyFloor(x) { return Math.floor(x); }
  function round(fn, x, digits) {
    if (isNaN(x) || isNaN(digits)) return NaN;
    var scale = Math.abs(digits) < 300 ? Math.pow(10, Math.trunc(digits)) : NaN;
    if (!isFinite(scale) || scale === 0) return NaN;
    var m = Math.abs(x) * scale, step;
    if (!isFinite(m)) step = m;
    else if (fn === "round") step = pyFloor(m + 0.5);
    else if (fn === "roundup") step = Math.ceil(m);
    else step = pyFloor(m);
    if (x === 0) return 0;
    var r = step / scale;
    return finite(x < 0 || Object.is(x, -0) ? -r : r);
  }
  function seconds(v, today) {
    var text = typeof v === "string" ? v : "";
    if (text.toLowerCase() === "today") text = today;
    var m = DATE.exec(text);
    if (!m) return NaN;
    var p = m.slice(1).map(function (g) { return g ? parseInt(g, 10) : 0; });
    if (p[1] < 1 || p[1] > 12 || p[3] > 23 || p[4] > 59 || p[5] > 59 || p[0] < 1) return NaN;
    var t = Date.UTC(p[0], p[1] - 1, p[2], p[3], p[4], p[5]);
    var d = new Date(t);
    if (p[0] < 100) { d.setUTCFullYear(p[0]); t = d.getTime(); }
    if (d.getUTCDate() !== p[2] || d.getUTCMonth() !== p[1] - 1) return NaN;
    return t / 1000;
  }
  function lookup(record, event, name, code) {
    var source = event === null ? record.values : (record.events[event] || {});
    if (code !== null) {
      var key = name + "___" + code.toLowerCase().replace(/[-.]/g, "_");
      return (Object.prototype.hasOwnProperty.call(source, key) && source[key]) || "0";
    }
    return Object.prototype.hasOwnProperty.call(source, name) ? source[name] : "";
  }
  function seqSum(ns) { var t = 0; for (var i = 0; i < ns.length; i++) t += ns[i]; return t; }

  function evaluate(tree, record) {
    var op = tree.op, a = tree.args;
    if (op === "num" || op === "str" || op === "bool") return tree.value;
    if (op === "field") return lookup(record, tree.event, tree.name, tree.code);
    if (op === "and") return truthy(evaluate(a[0], record)) && truthy(evaluate(a[1], record));
    if (op === "or") return truthy(evaluate(a[0], record)) || truthy(evaluate(a[1], record));
    if (op === "cmp") return compare(tree.cmp, evaluate(a[0], record), evaluate(a[1], record));
    if (op === "neg") return -toNumber(evaluate(a[0], record));
    if (op === "+" || op === "-" || op === "*" || op === "/" || op === "^") {
      var x = toNumber(evaluate(a[0], record)), y = toNumber(evaluate(a[1], record));
      if (op === "+") return x + y;
      if (op === "-") return x - y;
      if (op === "*") return x * y;
      if (op === "/") return y === 0 ? NaN : x / y;
      if (!isFinite(x) || !isFinite(y)) return NaN;
      if (x < 0 && !Number.isInteger(y)) return NaN;
      return finite(Math.pow(x, y));
    }
    return call(tree.fn, a, record);
  }
  function call(fn, args, record) {
    if (fn === "if") return evaluate(truthy(evaluate(args[0], record)) ? args[1] : args[2], record);
    var values = args.map(function (t) { return evaluate(t, record); });
    if (fn === "datediff") {
      var s = seconds(values[0], record.today), e = seconds(values[1], record.today);
      var unit = typeof values[2] === "string" ? values[2] : "";
      if (!Object.prototype.hasOwnProperty.call(UNITS, unit) || isNaN(s) || isNaN(e)) return NaN;
      var signed = values.length === 5 && truthy(values[4]);
      var diff = (e - s) / UNITS[unit];
      return signed ? diff : Math.abs(diff);
    }
    var ns = values.map(toNumber);
    if (fn === "round" || fn === "roundup" || fn === "rounddown") return round(fn, ns[0], ns.length > 1 ? ns[1] : 0);
    if (fn === "abs") return Math.abs(ns[0]);
    var present = ns.filter(function (n) { return !isNaN(n); });
    if (!present.length) return NaN;
    if (fn === "sum") return seqSum(present);
    if (fn === "mean") return seqSum(present) / present.length;
    return fn === "min" ? Math.min.apply(null, present) : Math.max.apply(null, present);
  }
  function shows(tree, record) { return tree === null || truthy(evaluate(tree, record)); }

  root.MerciaLogic = { evaluate: evaluate, shows: shows, truthy: truthy };
})(typeof window !== "undefined" ? window : globalThis);
