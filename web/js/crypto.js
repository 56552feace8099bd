// The contract's cryptography (§2, §4–§7) on the browser's WebCrypto. Pure functions over
// CryptoKeys and bytes; nothing here touches the network or storage.
//
// One RSA key pair serves RSA-OAEP (SHA-256, MGF1 SHA-256, label "parley") and RSA-PSS
// (SHA-256, salt 222). WebCrypto binds a CryptoKey to one algorithm, so the private key is
// imported twice, both times non-extractable.

import { b64decode, b64encode, concat, fromUtf8, sameString, utf8 } from "./encoding.js";

const subtle = globalThis.crypto && globalThis.crypto.subtle;
const OAEP_LABEL = utf8("parley");
const OAEP = { name: "RSA-OAEP", label: OAEP_LABEL };
const PSS = { name: "RSA-PSS", saltLength: 222 };
const CHALLENGE_PREFIX = utf8("parley.challenge.v1:");
const ACCEPTED_MODULI = new Set([2048, 3072, 4096]);

export const CHANNEL_KEY_BYTES = 32;

export class CryptoUnavailable extends Error {}

/** WebCrypto exists only in a secure context (https, or http on localhost). */
export function requireWebCrypto() {
  if (!subtle) throw new CryptoUnavailable("WebCrypto is not available: open the page over https or on localhost");
}

export async function sha256(bytes) {
  return new Uint8Array(await subtle.digest("SHA-256", bytes));
}

/** base64 SHA-256 of an SPKI DER: what clients pin and show. */
export async function fingerprint(spkiBytes) {
  return b64encode(await sha256(spkiBytes));
}

// --- the account key

/**
 * A new account key pair: RSA 2048, e = 65537. The pair is generated extractable once,
 * exported as PKCS#8, imported twice as non-extractable private keys (OAEP decrypt /
 * unwrap, PSS sign), and the PKCS#8 bytes are overwritten. Returns
 * { spki: Uint8Array, decryptKey, signKey }.
 */
export async function generateAccountKey() {
  requireWebCrypto();
  const pair = await subtle.generateKey(
    { name: "RSA-OAEP", modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]), hash: "SHA-256" },
    true,
    ["encrypt", "decrypt"],
  );
  const spki = new Uint8Array(await subtle.exportKey("spki", pair.publicKey));
  const pkcs8 = new Uint8Array(await subtle.exportKey("pkcs8", pair.privateKey));
  try {
    const decryptKey = await subtle.importKey("pkcs8", pkcs8, { name: "RSA-OAEP", hash: "SHA-256" }, false,
      ["decrypt", "unwrapKey"]);
    const signKey = await subtle.importKey("pkcs8", pkcs8, { name: "RSA-PSS", hash: "SHA-256" }, false, ["sign"]);
    return { spki, decryptKey, signKey };
  } finally {
    pkcs8.fill(0);
  }
}

/**
 * Imports another user's public key (base64 SPKI) for OAEP wrapping and PSS verifying,
 * refusing anything but RSA with a 2048/3072/4096-bit modulus and e = 65537.
 * Returns { oaep, pss, fingerprint, spki }.
 */
export async function importPublicKey(spkiB64) {
  const spki = b64decode(spkiB64);
  const oaep = await subtle.importKey("spki", spki, { name: "RSA-OAEP", hash: "SHA-256" }, false, ["encrypt"]);
  const { modulusLength, publicExponent } = oaep.algorithm;
  const e = Array.from(publicExponent).join(",");
  if (!ACCEPTED_MODULI.has(modulusLength) || (e !== "1,0,1" && e !== "0,1,0,1")) {
    throw new Error("not an acceptable RSA key (modulus 2048/3072/4096, exponent 65537)");
  }
  const pss = await subtle.importKey("spki", spki, { name: "RSA-PSS", hash: "SHA-256" }, false, ["verify"]);
  return { oaep, pss, spki: spkiB64, fingerprint: await fingerprint(spki), modulusBytes: modulusLength / 8 };
}

/** base64 RSA-PSS signature of the UTF-8 bytes of `text`. */
export async function sign(signKey, text) {
  return b64encode(await subtle.sign(PSS, signKey, utf8(text)));
}

/** Whether `sigB64` is a valid RSA-PSS signature of `text` by `publicKey` (imported). */
export async function verify(publicKey, sigB64, text) {
  let sig;
  try {
    sig = b64decode(sigB64);
  } catch {
    return false;
  }
  try {
    return await subtle.verify(PSS, publicKey.pss, sig, utf8(text));
  } catch {
    return false;
  }
}

export async function oaepEncrypt(publicKey, bytes) {
  return new Uint8Array(await subtle.encrypt(OAEP, publicKey.oaep, bytes));
}

export async function oaepDecrypt(decryptKey, bytes) {
  return new Uint8Array(await subtle.decrypt(OAEP, decryptKey, bytes));
}

// --- challenges (§4)

/**
 * The answer to a challenge: base64 SHA-256("parley.challenge.v1:" || the 32 decrypted
 * bytes). Refuses a challenge that does not decrypt to exactly 32 bytes.
 */
export async function answerChallenge(decryptKey, challengeB64) {
  const secret = await oaepDecrypt(decryptKey, b64decode(challengeB64));
  try {
    if (secret.length !== 32) throw new Error("the challenge does not decrypt to 32 bytes");
    return b64encode(await sha256(concat(CHALLENGE_PREFIX, secret)));
  } finally {
    secret.fill(0);
  }
}

// --- signed texts (§5, §6, §7)

/** `parley.membership.v1:${channel_id}:${version}:${prev}:${ts}:${owner_id}:${members}` */
export function membershipText(channelId, st) {
  const members = [...st.members].sort().join(",");
  return `parley.membership.v1:${channelId}:${st.version}:${st.prev}:${st.ts}:${st.owner_id}:${members}`;
}

/** base64 SHA-256 of a statement's signed text: the next statement's `prev`. */
export async function statementHash(channelId, st) {
  return b64encode(await sha256(utf8(membershipText(channelId, st))));
}

/** `parley.key.v1:${channel_id}:${key_id}:${previous_key_id or empty}:${membership_version}:${digest}` */
export function keyText(channelId, keyId, previousKeyId, membershipVersion, digest) {
  return `parley.key.v1:${channelId}:${keyId}:${previousKeyId || ""}:${membershipVersion}:${digest}`;
}

/** `${body}:${channel_id}:${ts}` */
export function messageText(body, channelId, ts) {
  return `${body}:${channelId}:${ts}`;
}

// --- channel keys (§6)

/**
 * A fresh channel key: 32 random bytes, returned as { raw, digest, key } where `key` is a
 * non-extractable AES-GCM CryptoKey. The caller wraps `raw` and then overwrites it.
 */
export async function newChannelKey() {
  const raw = crypto.getRandomValues(new Uint8Array(CHANNEL_KEY_BYTES));
  const digest = b64encode(await sha256(raw));
  const key = await subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
  return { raw, digest, key };
}

/**
 * Unwraps this user's copy of a channel key and checks it against the record's digest.
 * Returns a non-extractable AES-GCM CryptoKey; throws when it does not unwrap or match.
 */
export async function unwrapChannelKey(decryptKey, encryptedKeyB64, digestB64) {
  let raw;
  try {
    raw = await oaepDecrypt(decryptKey, b64decode(encryptedKeyB64));
  } catch {
    throw new Error("the wrapped key does not unwrap");
  }
  try {
    if (raw.length !== CHANNEL_KEY_BYTES || !sameString(b64encode(await sha256(raw)), digestB64)) {
      throw new Error("the unwrapped key does not match its digest");
    }
    return await subtle.importKey("raw", raw, { name: "AES-GCM" }, false, ["encrypt", "decrypt"]);
  } finally {
    raw.fill(0);
  }
}

// --- messages (§7)

/** AES-256-GCM with a random 96-bit IV, tag appended: { iv, ciphertext } as base64. */
export async function seal(key, plaintextBytes) {
  const iv = crypto.getRandomValues(new Uint8Array(12));
  const ciphertext = await subtle.encrypt({ name: "AES-GCM", iv, tagLength: 128 }, key, plaintextBytes);
  return { iv: b64encode(iv), ciphertext: b64encode(ciphertext) };
}

export async function open(key, ivB64, ciphertextB64) {
  const iv = b64decode(ivB64);
  if (iv.length !== 12) throw new Error("the IV is not 12 bytes");
  return new Uint8Array(await subtle.decrypt({ name: "AES-GCM", iv, tagLength: 128 }, key, b64decode(ciphertextB64)));
}

/** The sealed plaintext of a message: UTF-8 JSON {"body","sig"}, sig over messageText. */
export async function sealMessage(key, signKey, { body, channelId, ts }) {
  const sig = await sign(signKey, messageText(body, channelId, ts));
  return seal(key, utf8(JSON.stringify({ body, sig })));
}

/**
 * Opens and verifies one message with its (checked) channel key and the sender's pinned
 * public key. Returns { verified: true, body } or { verified: false, reason }; never the
 * sender's text when any step fails.
 */
export async function openMessage(key, senderKey, message) {
  let plaintext;
  try {
    plaintext = await open(key, message.iv, message.ciphertext);
  } catch {
    return { verified: false, reason: "does not decrypt with its key" };
  }
  let inner;
  try {
    inner = JSON.parse(fromUtf8(plaintext));
  } catch {
    return { verified: false, reason: "the plaintext is not JSON" };
  }
  if (!inner || typeof inner !== "object" || typeof inner.body !== "string" || typeof inner.sig !== "string") {
    return { verified: false, reason: 'the plaintext is not {"body","sig"}' };
  }
  if (!(await verify(senderKey, inner.sig, messageText(inner.body, message.channel_id, message.ts)))) {
    return { verified: false, reason: "the sender's signature does not verify" };
  }
  return { verified: true, body: inner.body };
}
