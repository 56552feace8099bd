// Encodings of the contract (§2): strict, canonical base64 (RFC 4648 §4, padding required),
// unpadded base64url, UTF-8, lowercase UUIDs. Pure functions, no I/O.

const STANDARD = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
const URL_SAFE = /^[A-Za-z0-9_-]*$/;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

/** Standard base64 with padding of `bytes` (Uint8Array or ArrayBuffer). */
export function b64encode(bytes) {
  const view = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  let binary = "";
  for (let i = 0; i < view.length; i += 0x8000) {
    binary += String.fromCharCode.apply(null, view.subarray(i, i + 0x8000));
  }
  return btoa(binary);
}

/**
 * Decodes strict base64: padding required, no whitespace, no characters of the other
 * alphabet, unused low bits zero (so each byte string has exactly one spelling).
 * Throws TypeError on anything else.
 */
export function b64decode(text) {
  if (typeof text !== "string" || !STANDARD.test(text)) throw new TypeError("not base64");
  const binary = atob(text);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  if (b64encode(bytes) !== text) throw new TypeError("not canonical base64");
  return bytes;
}

/** base64url without padding (passkeys, session tokens). */
export function b64urlEncode(bytes) {
  return b64encode(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** True when `text` is unpadded base64url of exactly `length` bytes. */
export function isB64url(text, length) {
  if (typeof text !== "string" || !URL_SAFE.test(text)) return false;
  return text.length === Math.ceil((length * 4) / 3);
}

export function utf8(text) {
  return encoder.encode(text);
}

/** Decodes UTF-8, refusing invalid sequences. */
export function fromUtf8(bytes) {
  return strictDecoder.decode(bytes);
}

export function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

export function isUuid(value) {
  return typeof value === "string" && UUID.test(value);
}

/** A random (v4) lowercase UUID. */
export function newUuid() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Constant-time comparison of two strings of public values (fingerprints, digests). */
export function sameString(a, b) {
  if (typeof a !== "string" || typeof b !== "string" || a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a.charCodeAt(i) ^ b.charCodeAt(i);
  return diff === 0;
}

export function nowSeconds() {
  return Math.floor(Date.now() / 1000);
}
