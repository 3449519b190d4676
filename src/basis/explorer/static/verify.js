/* Basis receipt verification, in the browser (DESIGN 1.2):
 *   receipt_hash = "0x" + sha256(JCS(core))
 * JCS is RFC 8785. SHA-256 comes from WebCrypto where the page is a secure context (HTTPS or
 * localhost); elsewhere, or with ?nocrypto=1, from the small implementation below. */
(function () {
  "use strict";

  // ---- RFC 8785 JSON Canonicalization Scheme -------------------------------------------
  var LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(^|[^\uD800-\uDBFF])[\uDC00-\uDFFF]/;

  function jcsString(s) {
    if (LONE_SURROGATE.test(s)) throw new TypeError("JCS: string with a lone surrogate");
    return JSON.stringify(s); // ES2019 escaping: \" \\ \b \f \n \r \t, other controls as \u00xx
  }

  function jcs(value) {
    if (value === null) return "null";
    switch (typeof value) {
      case "boolean":
        return value ? "true" : "false";
      case "number":
        if (!isFinite(value)) throw new TypeError("JCS: NaN and Infinity are not JSON");
        return JSON.stringify(value); // ECMAScript Number serialization; -0 gives "0"
      case "string":
        return jcsString(value);
      case "object":
        if (Array.isArray(value)) return "[" + value.map(jcs).join(",") + "]";
        // Default sort compares UTF-16 code units, which is what RFC 8785 requires.
        return "{" + Object.keys(value).sort().map(function (k) {
          return jcsString(k) + ":" + jcs(value[k]);
        }).join(",") + "}";
    }
    throw new TypeError("JCS: unsupported value of type " + typeof value);
  }

  // A receipt core's integers must survive JSON.parse exactly (DESIGN 1.2: amounts are decimal
  // strings because RFC 8785 numbers are IEEE doubles); a larger one cannot be verified as served.
  function requireSafeIntegers(value) {
    if (typeof value === "number" && Math.floor(value) === value && !Number.isSafeInteger(value))
      throw new RangeError("integer beyond 2^53-1 in the core (amounts must be decimal strings)");
    if (value && typeof value === "object")
      Object.keys(value).forEach(function (k) { requireSafeIntegers(value[k]); });
    return value;
  }

  // ---- SHA-256 (FIPS 180-4), for pages without WebCrypto ---------------------------------
  var K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

  function ror(x, n) { return (x >>> n) | (x << (32 - n)); }

  function sha256(bytes) { // Uint8Array -> Uint8Array(32)
    var n = bytes.length;
    var len = ((n + 9 + 63) >> 6) << 6;
    var m = new Uint8Array(len);
    m.set(bytes);
    m[n] = 0x80;
    var dv = new DataView(m.buffer);
    dv.setUint32(len - 8, Math.floor(n / 0x20000000)); // bit length, high word
    dv.setUint32(len - 4, (n << 3) >>> 0);             // bit length, low word
    var H = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    var W = new Uint32Array(64);
    for (var off = 0; off < len; off += 64) {
      var t;
      for (t = 0; t < 16; t++) W[t] = dv.getUint32(off + 4 * t);
      for (t = 16; t < 64; t++) {
        var x = W[t - 15], y = W[t - 2];
        W[t] = W[t - 16] + (ror(x, 7) ^ ror(x, 18) ^ (x >>> 3)) + W[t - 7] + (ror(y, 17) ^ ror(y, 19) ^ (y >>> 10));
      }
      var a = H[0], b = H[1], c = H[2], d = H[3], e = H[4], f = H[5], g = H[6], h = H[7];
      for (t = 0; t < 64; t++) {
        var t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + K[t] + W[t]) | 0;
        var t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      H[0] = (H[0] + a) | 0; H[1] = (H[1] + b) | 0; H[2] = (H[2] + c) | 0; H[3] = (H[3] + d) | 0;
      H[4] = (H[4] + e) | 0; H[5] = (H[5] + f) | 0; H[6] = (H[6] + g) | 0; H[7] = (H[7] + h) | 0;
    }
    var out = new Uint8Array(32), odv = new DataView(out.buffer);
    for (var i = 0; i < 8; i++) odv.setUint32(4 * i, H[i] >>> 0);
    return out;
  }

  function hex(bytes) {
    var s = "";
    for (var i = 0; i < bytes.length; i++) s += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return s;
  }

  function utf8(s) { return new TextEncoder().encode(s); }

  function forcedFallback() { return /(?:^|[?&])nocrypto=1(?:&|$)/.test(window.location.search); }

  function digest(bytes) { // -> Promise<{hex, method}>
    var subtle = window.isSecureContext && window.crypto && window.crypto.subtle;
    if (subtle && !forcedFallback()) {
      return subtle.digest("SHA-256", bytes).then(function (buf) {
        return { hex: hex(new Uint8Array(buf)), method: "webcrypto" };
      });
    }
    return Promise.resolve({ hex: hex(sha256(bytes)), method: "builtin" });
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) el.textContent = text;
  }

  function verifyPage() {
    var source = document.getElementById("receipt-core");
    var out = document.getElementById("verify-result");
    if (!source || !out) return Promise.resolve(null);
    var published = (out.getAttribute("data-published") || "").toLowerCase();
    var canonical;
    try {
      canonical = jcs(requireSafeIntegers(JSON.parse(source.textContent)));
    } catch (err) {
      return Promise.resolve(report(out, "error", published, "", "", String(err && err.message || err)));
    }
    setText("canonical-json", canonical);
    return digest(utf8(canonical)).then(function (r) {
      var computed = "0x" + r.hex;
      return report(out, computed === published ? "match" : "mismatch", published, computed, r.method, "");
    }, function (err) {
      return report(out, "error", published, "", "", String(err && err.message || err));
    });
  }

  var METHODS = { webcrypto: "WebCrypto (crypto.subtle)", builtin: "built-in SHA-256 (this page's script)" };

  function report(out, state, published, computed, method, error) {
    out.setAttribute("data-state", state);
    out.setAttribute("data-computed", computed);
    out.setAttribute("data-method", method);
    out.className = "verdict verdict-" + state;
    var verdict = state === "match" ? "\u2713 match: the hash recomputed here equals the published hash"
      : state === "mismatch" ? "\u2717 MISMATCH: the core shown does not hash to the published hash"
        : "could not verify: " + error;
    setText("verify-verdict", verdict);
    setText("verify-computed", computed || "\u2014");
    setText("verify-method", METHODS[method] || "\u2014");
    return { state: state, computed: computed, published: published, method: method, error: error };
  }

  window.BasisVerify = {
    jcs: jcs,
    requireSafeIntegers: requireSafeIntegers,
    sha256: sha256,
    sha256Hex: function (s) { return hex(sha256(typeof s === "string" ? utf8(s) : s)); },
    digest: digest,
    verifyPage: verifyPage,
  };
  window.BasisVerify.done = document.readyState === "loading"
    ? new Promise(function (resolve) {
      document.addEventListener("DOMContentLoaded", function () { verifyPage().then(resolve); });
    })
    : verifyPage();
})();
