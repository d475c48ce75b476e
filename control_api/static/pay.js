/*
 * dtmfmask hosted payment page script. Our own code, no third-party anything.
 *
 * PCI DSS 6.4.3: this script is inventoried, with its SHA-256, in
 * control_api/hostedpage.py (ASSETS), and the page loads it with Subresource Integrity:
 * change this file and the hash there must change too (a test checks).
 *
 * What it does, for the customer's convenience only (the server checks everything again):
 * - detects the card brand as the number is typed, groups the digits, puts the "/" in the
 *   expiry date;
 * - checks the number (brand range, length, Luhn), the expiry, the security code's length
 *   and the postal code before the form is sent, with a clear message per field;
 * - tells the agent's side how many characters each field holds (POST ./progress,
 *   {field, digits, brand}): counts only, never a typed value. Nothing is stored
 *   (no cookies, no localStorage) and nothing goes anywhere but this page's own origin.
 * Without it the page still works: the form posts and the server answers with a page.
 *
 * The brand table and the checks mirror control_api/cards.py.
 */

// The checks: pure functions, no page access (a test runs them in node against cards.py).
var dtmfmaskPayChecks = (function () {
  "use strict";

  // brand, [[low, high] prefixes], PAN lengths, CVV length, Luhn required (cards.py BRANDS)
  var BRANDS = [
    ["visa", [["4", "4"]], [13, 16, 19], 3, true],
    ["mastercard", [["51", "55"], ["2221", "2720"]], [16], 3, true],
    ["amex", [["34", "34"], ["37", "37"]], [15], 4, true],
    ["discover", [["6011", "6011"], ["644", "649"], ["65", "65"]], [16, 17, 18, 19], 3, true],
    [
      "diners",
      [["300", "305"], ["3095", "3095"], ["36", "36"], ["38", "39"]],
      [14, 15, 16, 17, 18, 19],
      3,
      true,
    ],
    ["jcb", [["3528", "3589"]], [16, 17, 18, 19], 3, true],
    ["unionpay", [["62", "62"], ["81", "81"]], [16, 17, 18, 19], 3, false],
    [
      "maestro",
      [
        ["5018", "5018"], ["5020", "5020"], ["5038", "5038"], ["5893", "5893"],
        ["6304", "6304"], ["6759", "6759"], ["6761", "6763"],
      ],
      [12, 13, 14, 15, 16, 17, 18, 19],
      3,
      true,
    ],
  ];
  var BRAND_NAMES = {
    visa: "Visa",
    mastercard: "Mastercard",
    amex: "American Express",
    discover: "Discover",
    diners: "Diners Club",
    jcb: "JCB",
    unionpay: "UnionPay",
    maestro: "Maestro",
  };
  var MAX_PAN = 19;
  var MAX_EXPIRY_YEARS = 20;

  // the same sentences as control_api/hostedpage.py MESSAGES
  var MESSAGES = {
    card_number: {
      empty: "Enter your card number.",
      not_digits: "The card number can only contain digits.",
      unknown_brand: "We do not recognise this card number. Check the first digits.",
      wrong_length: "The card number has the wrong number of digits. Check it and try again.",
      luhn_failed: "The card number is not valid. Check for a mistyped digit.",
    },
    expiry: {
      empty: "Enter the expiry date.",
      not_digits: "Enter the expiry date as MM/YY.",
      bad_month: "Enter the expiry date as MM/YY, with a month from 01 to 12.",
      expired: "This card has expired. Check the expiry date or use another card.",
      too_far_ahead: "The expiry date is too far in the future. Check the year.",
    },
    cvv: {
      empty: "Enter the security code.",
      not_digits: "The security code can only contain digits.",
      wrong_cvv_length:
        "The security code is 3 digits on the back of the card (4 on the front for American Express).",
      // the same code once the brand is known
      wrong_cvv_length_amex:
        "The security code is the 4 digits on the front of an American Express card.",
      wrong_cvv_length_other: "The security code is the 3 digits on the back of the card.",
    },
    postal_code: {
      empty: "Enter your postal code.",
      bad_postal_code: "Enter a valid postal code: 3 to 10 letters or digits.",
    },
  };

  var LABELS = {
    card_number: "Card number",
    expiry: "Expiry date",
    cvv: "Security code",
    postal_code: "Postal code",
  };

  // ------------------------------------------------------------------ brands and checks

  function digitsOf(text) {
    return text.replace(/[^0-9]/g, "");
  }

  function mayMatch(spec, prefix) {
    return spec[1].some(function (range) {
      var n = Math.min(prefix.length, range[0].length);
      var p = prefix.slice(0, n);
      return range[0].slice(0, n) <= p && p <= range[1].slice(0, n);
    });
  }

  function matches(spec, pan) {
    return spec[1].some(function (range) {
      var p = pan.slice(0, range[0].length);
      return pan.length >= range[0].length && range[0] <= p && p <= range[1];
    });
  }

  /** The one brand a number starting with `prefix` can be, else null. */
  function detectBrand(prefix) {
    if (!prefix) {
      return null;
    }
    prefix = prefix.slice(0, MAX_PAN);
    var found = BRANDS.filter(function (spec) {
      return mayMatch(spec, prefix);
    });
    return found.length === 1 ? found[0] : null;
  }

  function luhnValid(digits) {
    var total = 0;
    for (var i = 0; i < digits.length; i++) {
      var d = digits.charCodeAt(digits.length - 1 - i) - 48;
      if (i % 2) {
        d = d > 4 ? d * 2 - 9 : d * 2;
      }
      total += d;
    }
    return digits.length > 0 && total % 10 === 0;
  }

  function checkNumber(text) {
    var compact = text.replace(/[ -]/g, "");
    if (!compact) {
      return "empty";
    }
    if (!/^[0-9]+$/.test(compact)) {
      return "not_digits";
    }
    var spec = BRANDS.filter(function (s) {
      return matches(s, compact);
    })[0];
    if (!spec) {
      return "unknown_brand";
    }
    if (spec[2].indexOf(compact.length) < 0) {
      return "wrong_length";
    }
    if (spec[4] && !luhnValid(compact)) {
      return "luhn_failed";
    }
    return null;
  }

  function checkExpiry(text, today) {
    var compact = text.replace(/[ /-]/g, "");
    if (!compact) {
      return "empty";
    }
    if (!/^[0-9]+$/.test(compact)) {
      return "not_digits";
    }
    if (compact.length === 6) {
      compact = compact.slice(0, 2) + compact.slice(4);
    }
    var month = parseInt(compact.slice(0, 2), 10);
    if (compact.length !== 4 || month < 1 || month > 12) {
      return "bad_month";
    }
    var thisYear = today.getFullYear();
    var year = thisYear - (thisYear % 100) + parseInt(compact.slice(2), 10);
    if (year < thisYear - 50) {
      year += 100;
    } else if (year > thisYear + 50) {
      year -= 100;
    }
    var thisMonth = today.getMonth() + 1;
    if (year * 12 + month < thisYear * 12 + thisMonth) {
      return "expired";
    }
    if (year * 12 + month > (thisYear + MAX_EXPIRY_YEARS) * 12 + thisMonth) {
      return "too_far_ahead";
    }
    return null;
  }

  function checkCvv(text, brandSpec) {
    var compact = text.trim();
    if (!compact) {
      return "empty";
    }
    if (!/^[0-9]+$/.test(compact)) {
      return "not_digits";
    }
    var allowed = brandSpec ? [brandSpec[3]] : [3, 4];
    return allowed.indexOf(compact.length) < 0 ? "wrong_cvv_length" : null;
  }

  function checkPostal(text) {
    var compact = text.trim();
    if (!compact) {
      return "empty";
    }
    if (
      compact.length < 3 ||
      compact.length > 10 ||
      !/^[A-Za-z0-9](?:[A-Za-z0-9 -]*[A-Za-z0-9])?$/.test(compact)
    ) {
      return "bad_postal_code";
    }
    return null;
  }

  return {
    BRAND_NAMES: BRAND_NAMES,
    MAX_PAN: MAX_PAN,
    MESSAGES: MESSAGES,
    LABELS: LABELS,
    digitsOf: digitsOf,
    detectBrand: detectBrand,
    luhnValid: luhnValid,
    checkNumber: checkNumber,
    checkExpiry: checkExpiry,
    checkCvv: checkCvv,
    checkPostal: checkPostal,
  };
})();

// The page: formatting, messages, progress reports, the submit.
(function (c) {
  "use strict";

  var form = document.getElementById("payform");
  if (!form) {
    return; // result and error pages have no form
  }
  form.noValidate = true; // our messages replace the browser's bubbles
  var BRAND_NAMES = c.BRAND_NAMES;
  var MAX_PAN = c.MAX_PAN;
  var MESSAGES = c.MESSAGES;
  var LABELS = c.LABELS;
  var digitsOf = c.digitsOf;
  var detectBrand = c.detectBrand;

  var inputs = {};
  ["card_number", "expiry", "cvv", "postal_code"].forEach(function (name) {
    var el = document.getElementById(name);
    if (el) {
      inputs[name] = el;
    }
  });
  var errors = document.getElementById("errors");
  var brandOut = document.getElementById("brand");
  var brandLine = document.getElementById("brand_line");
  if (brandLine) {
    brandLine.hidden = false; // it says something only with this script running
  }
  var pay = document.getElementById("pay");
  var csrfInput = form.elements.namedItem("csrf");
  var csrf = csrfInput ? csrfInput.value : "";
  var progressUrl = location.pathname.replace(/\/+$/, "") + "/progress";

  function numberBrand() {
    return inputs.card_number ? detectBrand(digitsOf(inputs.card_number.value)) : null;
  }

  function check(name) {
    var el = inputs[name];
    var value = el.value;
    if (name === "card_number") {
      return c.checkNumber(value);
    }
    if (name === "expiry") {
      return c.checkExpiry(value, new Date());
    }
    if (name === "cvv") {
      return c.checkCvv(value, numberBrand());
    }
    return c.checkPostal(value);
  }

  function fieldMessage(name, code) {
    if (name === "cvv" && code === "wrong_cvv_length") {
      var spec = numberBrand();
      if (spec) {
        code = spec[0] === "amex" ? "wrong_cvv_length_amex" : "wrong_cvv_length_other";
      }
    }
    return MESSAGES[name][code] || "Check this field.";
  }

  function showFieldError(name, code) {
    var el = inputs[name];
    var out = document.getElementById(name + "_error");
    if (code) {
      el.setAttribute("aria-invalid", "true");
      if (out) {
        out.textContent = fieldMessage(name, code);
      }
    } else {
      el.removeAttribute("aria-invalid");
      if (out) {
        out.textContent = "";
      }
    }
  }

  function showSummary(problems) {
    while (errors.firstChild) {
      errors.removeChild(errors.firstChild);
    }
    if (!problems.length) {
      return;
    }
    var head = document.createElement("p");
    head.textContent =
      problems.length === 1 ? "Please correct this:" : "Please correct these " + problems.length + ":";
    var list = document.createElement("ul");
    problems.forEach(function (problem) {
      var item = document.createElement("li");
      item.textContent = LABELS[problem[0]] + ": " + fieldMessage(problem[0], problem[1]);
      list.appendChild(item);
    });
    errors.appendChild(head);
    errors.appendChild(list);
  }

  // -- formatting as typed (only when the caret is at the end: editing mid-number stays put)

  function groupNumber(digits, spec) {
    var sizes = spec && spec[0] === "amex" ? [4, 6, 5] : [4, 4, 4, 4, 3];
    var parts = [];
    var at = 0;
    for (var i = 0; i < sizes.length && at < digits.length; i++) {
      parts.push(digits.slice(at, at + sizes[i]));
      at += sizes[i];
    }
    if (at < digits.length) {
      parts.push(digits.slice(at));
    }
    return parts.join(" ");
  }

  function atEnd(el) {
    return el.selectionStart === null || el.selectionStart === el.value.length;
  }

  function formatNumber(el) {
    var digits = digitsOf(el.value);
    var spec = detectBrand(digits);
    var longest = spec ? Math.max.apply(null, spec[2]) : MAX_PAN;
    digits = digits.slice(0, longest);
    if (atEnd(el)) {
      el.value = groupNumber(digits, spec);
    }
    if (brandOut) {
      brandOut.textContent = spec ? BRAND_NAMES[spec[0]] : digits ? "checking…" : "not yet known";
    }
    if (inputs.cvv) {
      inputs.cvv.maxLength = spec ? spec[3] : 4;
    }
  }

  function formatExpiry(el, deleting) {
    var digits = digitsOf(el.value).slice(0, 4);
    if (!atEnd(el) || deleting) {
      return;
    }
    if (digits.length === 1 && digits > "1") {
      digits = "0" + digits; // "4" means April
    }
    el.value = digits.length > 2 ? digits.slice(0, 2) + "/" + digits.slice(2) : digits;
  }

  // -- progress: counts per field, never a value; one request at a time, latest wins

  var sent = {};
  var pending = {};
  var busy = false;

  function count(name) {
    var value = inputs[name].value;
    if (name === "postal_code") {
      return value.replace(/[^A-Za-z0-9]/g, "").length;
    }
    var n = digitsOf(value).length;
    return name === "expiry" ? Math.min(n, 4) : n;
  }

  function report(name) {
    var spec = name === "card_number" ? numberBrand() : null;
    pending[name] = { field: name, digits: count(name), brand: spec ? spec[0] : null };
    pump();
  }

  function pump() {
    if (busy) {
      return;
    }
    var names = Object.keys(pending);
    if (!names.length) {
      return;
    }
    var msg = pending[names[0]];
    delete pending[names[0]];
    var last = sent[msg.field];
    if (last && last.digits === msg.digits && last.brand === msg.brand) {
      pump();
      return;
    }
    busy = true;
    fetch(progressUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(msg),
      credentials: "same-origin",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    })
      .then(function (response) {
        if (response.ok) {
          sent[msg.field] = msg;
        }
      })
      .catch(function () {
        // progress is a courtesy to the agent: the payment does not depend on it
      })
      .then(function () {
        busy = false;
        pump();
      });
  }

  Object.keys(inputs).forEach(function (name) {
    var el = inputs[name];
    el.addEventListener("input", function (event) {
      var deleting = event.inputType && event.inputType.indexOf("delete") === 0;
      if (name === "card_number") {
        formatNumber(el);
      } else if (name === "expiry") {
        formatExpiry(el, deleting);
      }
      if (el.getAttribute("aria-invalid") === "true" && !check(name)) {
        showFieldError(name, null); // fixed: clear the message at once
      }
      report(name);
    });
    el.addEventListener("blur", function (event) {
      // going to the pay button: the submit checks everything, and a message appearing now
      // would move the button from under the pointer before the click lands
      if (el.value && event.relatedTarget !== pay) {
        showFieldError(name, check(name));
      }
    });
  });

  form.addEventListener("submit", function (event) {
    var problems = [];
    Object.keys(inputs).forEach(function (name) {
      var code = check(name);
      showFieldError(name, code);
      if (code) {
        problems.push([name, code]);
      }
    });
    showSummary(problems);
    if (problems.length) {
      event.preventDefault();
      errors.focus();
      return;
    }
    pay.disabled = true; // one submit: the link is single-use
    pay.setAttribute("aria-busy", "true");
    pay.textContent = "Processing…";
  });

  window.addEventListener("pageshow", function (event) {
    if (event.persisted) {
      pay.disabled = false; // back from the result page: the button was left disabled
      pay.removeAttribute("aria-busy");
    }
  });

  if (errors.firstChild) {
    errors.focus(); // the server found a problem: say so first
  }
  if (inputs.card_number) {
    formatNumber(inputs.card_number);
  }
})(dtmfmaskPayChecks);
