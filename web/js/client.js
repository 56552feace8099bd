// The Parley protocol client for the browser, with the Swift SDK's behaviour (docs/protocol.md,
// "What the Swift client does"):
//   - public keys pinned on first sight (per local account, in IndexedDB); a changed key is
//     refused and reported loudly;
//   - membership chains verified from version 1 with the relay's rules and pinned keys;
//   - key records accepted only when signed by a member of their membership version and
//     matching their digest; rotation on expiry, after membership changes, on demand;
//     key_conflict / members_mismatch handled by fetching and retrying;
//   - sends idempotent through client_msg_id; messages failing any check are shown as
//     unverifiable, never as the sender's text; replays (a known (key_id, iv) under another
//     seq) dropped;
//   - after a drop: backoff, `auth`, `subscribe` with `after` = the last seq delivered.
//
// Events go to the UI through the callbacks in `on`; the UI never sees keys or tokens.

import * as wc from "./crypto.js";
import { MembershipChain, changeBetween } from "./membership.js";
import { b64encode, isB64url, isUuid, newUuid, nowSeconds } from "./encoding.js";
import { Disconnected, RelayError, Transport, isTransient, withFreshConnection } from "./protocol.js";

export class SessionEnded extends Error {
  constructor(message = "the session has ended: log in again") {
    super(message);
    this.sessionEnded = true;
  }
}

/** A check failed (key change, chain, key record): already reported as an alert. */
export class VerificationFailed extends Error {}

export class KeyChanged extends VerificationFailed {
  constructor({ userId, username, pinned, presented }) {
    super(`the key of ${username || userId} changed`);
    Object.assign(this, { userId, username, pinned, presented });
  }
}

/** A mistake of the user (unknown name, not the owner...), worth showing as is. */
export class UserError extends Error {}

const KEY_EXPIRY_MARGIN_MS = 250;
const SEND_ATTEMPTS = 8;
const HISTORY_MAX = 200;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class ParleyClient {
  /**
   * url: the relay's WebSocket URL; store: a Store; on: callbacks
   * { state(s), channels(list), message(channelId, msg), member(channelId, event),
   *   key(channelId, keyId), alert(alert), sessionEnded() }.
   */
  constructor({ url, store, on = {} }) {
    this.url = url;
    this.store = store;
    this.on = on;
    this.reset();
  }

  reset() {
    this.identity = null;          // {username, userId, spki, decryptKey, signKey, session}
    this.transport = null;
    this.pins = new Map();         // userId -> {fingerprint, spki, username}
    this.publicKeys = new Map();   // userId -> imported public key (matches its pin)
    this.usernames = new Map();    // userId -> username
    this.chains = new Map();       // channelId -> MembershipChain (verified)
    this.channelKeys = new Map();  // keyId -> {keyId, channelId, creatorId, membershipVersion, key, expiresAt}
    this.sendKeys = new Map();     // channelId -> keyId to send with
    this.sendKeyTasks = new Map(); // channelId -> Promise of a send key
    this.latestKeyIds = new Map(); // channelId -> newest key id seen
    this.channels = new Map();     // channelId -> {channelId, name, role, lastSeq, keyId, membershipVersion}
    this.followed = new Set();
    this.positions = new Map();    // channelId -> {lastSeq (delivered), unread}
    this.seenPairs = new Map();    // `${keyId}|${iv}` -> seq
    this.inbox = [];
    this.processing = false;
    this.selected = null;
    this.alerts = [];
  }

  get me() {
    return this.identity ? { userId: this.identity.userId, username: this.identity.username } : null;
  }

  get connected() {
    return !!(this.transport && this.transport.ready);
  }

  // ---------------------------------------------------------------- accounts (§4)

  /**
   * Makes a key pair in this browser, signs up and signs in. Returns the passkey (shown
   * once by the caller, never stored).
   */
  async signup(username) {
    const key = await wc.generateAccountKey();
    const spki = b64encode(key.spki);
    const done = await withFreshConnection(this.url, async (send) => {
      const issued = await send("signup", { username, public_key: spki });
      const answer = await wc.answerChallenge(key.decryptKey, issued.challenge);
      return send("challenge", { challenge_id: issued.challenge_id, answer });
    });
    if (!isUuid(done.user_id) || typeof done.passkey !== "string") throw new Error("unexpected challenge result");
    const identity = {
      username: done.username, userId: done.user_id, spki, decryptKey: key.decryptKey, signKey: key.signKey,
      session: done.session,
    };
    await this.store.saveIdentity(identity);
    await this.startSession(identity);
    return done.passkey;
  }

  /** Signs in with the passkey; the private key must be in this browser since signup. */
  async login(username, passkey) {
    const stored = await this.store.identity(username);
    if (!stored) throw new UserError(`this browser holds no key for ${username}: log in where you signed up`);
    if (!isB64url(passkey, 32)) throw new UserError("a passkey is 43 characters of base64url");
    const done = await withFreshConnection(this.url, async (send) => {
      const issued = await send("login", { username, passkey });
      const answer = await wc.answerChallenge(stored.decryptKey, issued.challenge);
      return send("challenge", { challenge_id: issued.challenge_id, answer });
    });
    if (done.user_id !== stored.userId) throw new Error("the relay signed in another user");
    const identity = { ...stored, session: done.session };
    await this.store.saveIdentity(identity);
    await this.startSession(identity);
  }

  /** Resumes the stored session of `username`, if any. False when there is none. */
  async resume(username) {
    const stored = username ? await this.store.identity(username) : null;
    if (!stored || !stored.session) return false;
    await this.startSession(stored);
    return true;
  }

  async logout() {
    const identity = this.identity;
    if (!identity) return;
    try {
      await this.request("logout", {}, { waitMs: 3000 });
    } catch {
      // The session is forgotten here either way.
    }
    await this.endSession();
  }

  async endSession() {
    const identity = this.identity;
    if (this.transport) this.transport.stop();
    if (identity) await this.store.setSession(identity.username, null);
    this.store.setCurrentAccount(null);
    this.reset();
  }

  async startSession(identity) {
    if (this.transport) this.transport.stop();
    this.reset();
    this.identity = identity;
    this.store.setCurrentAccount(identity.username);
    this.usernames.set(identity.userId, identity.username);
    for (const pin of await this.store.pins(identity.userId)) {
      this.pins.set(pin.userId, { fingerprint: pin.fingerprint, spki: pin.spki, username: pin.username });
      if (pin.username) this.usernames.set(pin.userId, pin.username);
    }
    for (const state of await this.store.channelStates(identity.userId)) {
      this.positions.set(state.channelId, { lastSeq: state.lastSeq, unread: state.unread || 0 });
    }
    await this.trust(identity.userId, identity.spki, identity.username);
    this.transport = new Transport(this.url, {
      onEvent: (frame) => this.enqueue({ kind: "event", frame }),
      onState: (state) => this.on.state?.(state),
      restore: (send) => this.restore(send),
    });
    this.transport.onSessionEnded = () => this.sessionEnded();
    this.transport.start();
  }

  async sessionEnded() {
    await this.endSession();
    this.on.sessionEnded?.();
  }

  /** On each new connection: `auth`, the channel list, `subscribe` with `after`. */
  async restore(send) {
    try {
      await send("auth", { session: this.identity.session });
    } catch (error) {
      if (error instanceof RelayError && (error.code === "auth_failed" || error.code === "unauthenticated")) {
        throw new SessionEnded();
      }
      throw error;
    }
    const list = await send("channels", {});
    this.setChannels(list.channels);
    const entries = [];
    for (const channel of list.channels) {
      let after = this.positions.get(channel.channel_id)?.lastSeq ?? null;
      if (after !== null && after > channel.last_seq) {
        this.alert("history", `the relay's history of ${channel.name} ends at ${channel.last_seq}, below seq ${after} seen here`);
        after = channel.last_seq;
        this.setPosition(channel.channel_id, { lastSeq: after });
      }
      entries.push({ channel_id: channel.channel_id, ...(after !== null ? { after } : {}) });
      this.followed.add(channel.channel_id);
    }
    if (entries.length) await send("subscribe", { channels: entries }, (reply) => this.subscribed(reply, entries));
  }

  // ---------------------------------------------------------------- requests

  async request(type, fields = {}, options = {}) {
    if (!this.transport) throw new SessionEnded("not signed in");
    return this.transport.request(type, fields, options);
  }

  /** A request retried while the relay says rate_limited / unavailable / internal. */
  async requestRetrying(type, fields = {}) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.request(type, fields);
      } catch (error) {
        if (error instanceof RelayError && error.retryable && attempt < 5) {
          await sleep(error.retryAfterMs ?? 200);
          continue;
        }
        throw error;
      }
    }
  }

  // ---------------------------------------------------------------- alerts

  /** Records and reports a security alert (the same one once). */
  alert(kind, text, details = {}) {
    const known = this.alerts.find((a) => a.kind === kind && a.text === text);
    if (known) return known;
    const alert = { kind, text, ...details };
    this.alerts.push(alert);
    this.on.alert?.(alert);
    return alert;
  }

  refuse(why) {
    this.alert("verification", why);
    return new VerificationFailed(why);
  }

  // ---------------------------------------------------------------- pinned keys

  /**
   * Checks a public key the relay presented for `userId` against the pin: pinned on first
   * sight, refused loudly (alert + KeyChanged) when it differs. Returns the imported key.
   */
  async trust(userId, spkiB64, username = null) {
    if (username) this.usernames.set(userId, username);
    let key;
    try {
      key = await wc.importPublicKey(spkiB64);
    } catch {
      throw this.refuse(`the public key of ${username || userId} is not an acceptable RSA key`);
    }
    const pin = this.pins.get(userId);
    if (!pin) {
      const entry = { userId, fingerprint: key.fingerprint, spki: spkiB64, username: username || null };
      this.pins.set(userId, entry);
      await this.store.savePin(this.identity.userId, entry);
    } else if (pin.fingerprint !== key.fingerprint) {
      const name = username || pin.username || userId;
      const details = { userId, username: name, pinned: pin.fingerprint, presented: key.fingerprint };
      this.alert("keyChanged",
        `The key of ${name} changed: pinned ${pin.fingerprint}, the relay now presents ${key.fingerprint}. It is refused.`,
        details);
      throw new KeyChanged(details);
    } else if (username && pin.username !== username) {
      pin.username = username;
      await this.store.savePin(this.identity.userId, { userId, ...pin });
    }
    this.publicKeys.set(userId, key);
    return key;
  }

  /** The pinned key of `userId`: in memory, from the pin, or fetched and pinned. */
  async pinnedKey(userId) {
    const known = this.publicKeys.get(userId);
    if (known) return known;
    const pin = this.pins.get(userId);
    if (pin) {
      const key = await wc.importPublicKey(pin.spki);
      this.publicKeys.set(userId, key);
      return key;
    }
    await this.lookUp({ user_id: userId });
    const key = this.publicKeys.get(userId);
    if (!key) throw new Error(`no key for ${userId}`);
    return key;
  }

  /** `user` by name or id; its key is checked against the pins. */
  async lookUp(query) {
    let user;
    try {
      user = await this.request("user", query);
    } catch (error) {
      if (error instanceof RelayError && error.code === "not_found") {
        throw new UserError(`no user ${query.username || query.user_id}`);
      }
      throw error;
    }
    if (query.user_id && user.user_id !== query.user_id) throw new Error("the relay described another user");
    if (query.username && user.username !== query.username) throw new Error("the relay described another user");
    const key = await this.trust(user.user_id, user.public_key, user.username);
    return { userId: user.user_id, username: user.username, fingerprint: key.fingerprint };
  }

  username(userId) {
    return this.usernames.get(userId) || null;
  }

  fingerprintOf(userId) {
    return this.pins.get(userId)?.fingerprint || null;
  }

  /** The username of `userId`, looked up when unknown (for display). */
  async usernameOf(userId) {
    const known = this.usernames.get(userId);
    if (known) return known;
    try {
      return (await this.lookUp({ user_id: userId })).username;
    } catch {
      return null;
    }
  }

  // ---------------------------------------------------------------- channels (§5)

  setChannels(list) {
    const next = new Map();
    for (const c of list) {
      next.set(c.channel_id, {
        channelId: c.channel_id, name: c.name, role: c.role, lastSeq: c.last_seq, keyId: c.key_id,
        membershipVersion: c.membership_version,
      });
      if (c.key_id && !this.latestKeyIds.has(c.channel_id)) this.latestKeyIds.set(c.channel_id, c.key_id);
    }
    this.channels = next;
    this.on.channels?.(this.channelList());
  }

  channelList() {
    return [...this.channels.values()].map((c) => ({
      channelId: c.channelId, name: c.name, role: c.role,
      unread: this.positions.get(c.channelId)?.unread || 0,
      lastSeq: this.positions.get(c.channelId)?.lastSeq ?? null,
    }));
  }

  async refreshChannels() {
    const list = await this.request("channels");
    this.setChannels(list.channels);
    return this.channelList();
  }

  /** Creates a channel owned by this user with the named members; returns its id. */
  async createChannel(name, usernames) {
    const me = this.identity;
    const members = [];
    for (const username of usernames) {
      const user = await this.lookUp({ username });
      if (!members.includes(user.userId) && user.userId !== me.userId) members.push(user.userId);
    }
    const channelId = newUuid();
    const statement = MembershipChain.first({ ownerId: me.userId, members, now: nowSeconds() });
    statement.sig = await wc.sign(me.signKey, wc.membershipText(channelId, statement));
    const result = await this.requestRetrying("channel.create", { channel_id: channelId, name, membership: statement });
    await this.record(channelId, statement);
    for (const m of result.members) await this.trust(m.user_id, m.public_key, m.username).catch(() => {});
    this.channels.set(channelId, {
      channelId, name: result.name, role: "owner", lastSeq: 0, keyId: null, membershipVersion: 1,
    });
    this.on.channels?.(this.channelList());
    await this.subscribe([channelId], { [channelId]: 0 });
    return channelId;
  }

  async addMember(channelId, username) {
    const user = await this.lookUp({ username });
    await this.changeMembership(channelId, user.userId, true);
    await this.rotateAfterChange(channelId);
  }

  async removeMember(channelId, userId) {
    await this.changeMembership(channelId, userId, false);
    await this.rotateAfterChange(channelId);
  }

  async leave(channelId) {
    await this.changeMembership(channelId, this.identity.userId, false);
  }

  /**
   * A membership change expires the key: the changer establishes the next one at once (a
   * key another member already made for the new membership is adopted). On failure the
   * next send rotates.
   */
  async rotateAfterChange(channelId) {
    try {
      await this.keyForSending(channelId, null);
    } catch {
      // Left to the next send, which rotates an expired key.
    }
  }

  /**
   * The members: ids and roles from the verified chain, names and keys from the relay,
   * keys checked against the pins. A relay list that disagrees with the chain is refused.
   * [{userId, username, role, fingerprint, keyChanged, presented}]
   */
  async members(channelId) {
    for (let attempt = 1; ; attempt++) {
      // The keys the relay presents are checked against the pins first, so a changed key
      // is reported as such even when it also breaks the chain's signatures.
      const list = await this.request("channel.members", { channel_id: channelId });
      const out = [];
      for (const m of list.members) {
        const entry = { userId: m.user_id, username: m.username, role: "member" };
        try {
          entry.fingerprint = (await this.trust(m.user_id, m.public_key, m.username)).fingerprint;
          entry.keyChanged = false;
        } catch (error) {
          if (!(error instanceof KeyChanged)) throw error;
          entry.fingerprint = error.pinned;
          entry.presented = error.presented;
          entry.keyChanged = true;
        }
        out.push(entry);
      }
      const chain = await this.refreshChain(channelId);
      const listed = new Set(out.map((m) => m.userId));
      const agree = list.membership_version === chain.version && listed.size === chain.members.length
        && chain.members.every((m) => listed.has(m));
      if (!agree) {
        if (attempt < 3) continue;
        throw this.refuse(`the relay lists members of ${channelId} that differ from the verified chain`);
      }
      for (const entry of out) entry.role = entry.userId === chain.owner ? "owner" : "member";
      return out.sort((a, b) => (a.userId < b.userId ? -1 : 1));
    }
  }

  /**
   * Signs and submits the next statement from the verified chain; a concurrent change
   * that took the version: the chain is read again and the statement made anew.
   */
  async changeMembership(channelId, userId, adding) {
    const me = this.identity;
    for (let attempt = 1; ; attempt++) {
      const chain = await this.refreshChain(channelId);
      if (!adding && !chain.members.includes(userId)) throw new UserError("not a member");
      if (adding && chain.members.includes(userId)) throw new UserError("already a member");
      const leaving = !adding && userId === me.userId;
      if (!leaving && chain.owner !== me.userId) throw new UserError("only the owner adds or removes members");
      const statement = chain.next({ adding, userId, signerId: me.userId, now: nowSeconds() });
      statement.sig = await wc.sign(me.signKey, wc.membershipText(channelId, statement));
      try {
        await this.requestRetrying(adding ? "channel.add" : "channel.remove",
          { channel_id: channelId, user_id: userId, membership: statement });
      } catch (error) {
        const unclear = error instanceof Disconnected || (error instanceof RelayError && error.code === "bad_request");
        if (!unclear) throw error;
        // Another change took this version, or the reply was lost: the chain says which.
        let fresh = null;
        try {
          fresh = await this.refreshChain(channelId);
        } catch {
          fresh = this.chains.get(channelId) || null;
        }
        const landed = fresh?.statement(statement.version);
        if (landed && landed.sig === statement.sig) {
          this.applied(channelId, userId, adding);
          return;
        }
        if (fresh && fresh.version >= statement.version && attempt < 3) continue;
        throw error;
      }
      await this.record(channelId, statement);
      this.applied(channelId, userId, adding);
      return;
    }
  }

  applied(channelId, userId, adding) {
    this.sendKeys.delete(channelId);
    if (!adding && userId === this.identity.userId) this.forgetChannel(channelId);
  }

  forgetChannel(channelId) {
    this.followed.delete(channelId);
    this.channels.delete(channelId);
    this.on.channels?.(this.channelList());
  }

  /** Appends a statement this client signed to its verified chain (checked all the same). */
  async record(channelId, statement) {
    const chain = this.chains.get(channelId) || new MembershipChain(channelId);
    const own = await this.pinnedKey(this.identity.userId);
    let extended;
    try {
      extended = await chain.extended([statement], async (signer, text, sig) =>
        signer === this.identity.userId && wc.verify(own, sig, text));
    } catch (error) {
      throw this.refuse(error.message);
    }
    this.keepChain(channelId, extended);
  }

  keepChain(channelId, chain) {
    const current = this.chains.get(channelId);
    if (!current || chain.version >= current.version) this.chains.set(channelId, chain);
  }

  /** Fetches the statements after the verified version and verifies them. */
  async refreshChain(channelId) {
    const after = this.chains.get(channelId)?.version || 0;
    const result = await this.request("channel.membership",
      { channel_id: channelId, ...(after > 0 ? { after_version: after } : {}) });
    if (after === 0 && result.statements.length === 0) {
      throw this.refuse(`the relay returned no membership statements for ${channelId}`);
    }
    return this.verifyStatements(channelId, result.statements);
  }

  async verifiedChain(channelId, version) {
    const chain = this.chains.get(channelId);
    if (chain && chain.version >= version) return chain;
    return this.refreshChain(channelId);
  }

  async verifyStatements(channelId, statements) {
    const keys = new Map();
    for (const signer of new Set(statements.map((s) => s.signer_id))) {
      try {
        keys.set(signer, await this.pinnedKey(signer));
      } catch (error) {
        if (isTransient(error)) throw error;
        // An unknown signer or a changed key: its signature cannot verify.
      }
    }
    const chain = this.chains.get(channelId) || new MembershipChain(channelId);
    let extended;
    try {
      extended = await chain.extended(statements, async (signer, text, sig) =>
        keys.has(signer) && wc.verify(keys.get(signer), sig, text));
    } catch (error) {
      throw this.refuse(error.message);
    }
    this.keepChain(channelId, extended);
    return this.chains.get(channelId);
  }

  // ---------------------------------------------------------------- keys (§6)

  /** The key id to show for a channel: the one sent with, else the newest seen. */
  currentKeyId(channelId) {
    return this.sendKeys.get(channelId) || this.latestKeyIds.get(channelId) || null;
  }

  noteKeyId(channelId, keyId) {
    if (!keyId) return;
    this.latestKeyIds.set(channelId, keyId);
    this.on.key?.(channelId, keyId);
  }

  /** Rotates the channel key now: a fresh key for exactly the current verified members. */
  async rotateKey(channelId) {
    const newest = await this.newestKey(channelId);
    return (await this.rotate(channelId, newest.key?.key_id || null, { force: true })).keyId;
  }

  async newestKey(channelId) {
    const result = await this.request("key", { channel_id: channelId });
    if (result.key && result.key.channel_id !== channelId) throw new Error("the relay answered with a key of another channel");
    if (result.key) this.latestKeyIds.set(channelId, result.key.key_id);
    return { key: result.key, rotationRequired: result.rotation_required };
  }

  usableForSending(key) {
    return key.expiresAt - KEY_EXPIRY_MARGIN_MS > Date.now()
      && key.membershipVersion === this.chains.get(key.channelId)?.version;
  }

  /** A key to send with: cached while fresh, else the relay's newest when it checks out, else a new one. */
  async keyForSending(channelId, refused) {
    const id = this.sendKeys.get(channelId);
    const cached = id && id !== refused ? this.channelKeys.get(id) : null;
    if (cached && this.usableForSending(cached)) return cached;
    this.sendKeys.delete(channelId);
    const running = this.sendKeyTasks.get(channelId);
    if (running) return running;
    const task = this.establishSendKey(channelId, refused);
    this.sendKeyTasks.set(channelId, task);
    try {
      return await task;
    } finally {
      if (this.sendKeyTasks.get(channelId) === task) this.sendKeyTasks.delete(channelId);
    }
  }

  async establishSendKey(channelId, refused) {
    const newest = await this.newestKey(channelId);
    if (newest.key && newest.key.key_id !== refused) {
      const key = await this.adoptable(newest);
      if (key) return key;
    }
    return this.rotate(channelId, newest.key?.key_id || null);
  }

  /** The relay's newest key when it can be sent with (checked, fresh, current membership). */
  async adoptable(newest) {
    const record = newest.key;
    if (!record || newest.rotationRequired || !record.encrypted_key
      || record.expires_at - KEY_EXPIRY_MARGIN_MS <= Date.now()) return null;
    try {
      const key = await this.accept(record);
      key.expiresAt = Math.min(key.expiresAt, record.expires_at);
      const chain = await this.verifiedChain(record.channel_id, key.membershipVersion);
      if (key.membershipVersion !== chain.version) return null;
      this.sendKeys.set(record.channel_id, key.keyId);
      return key;
    } catch (error) {
      if (isTransient(error)) throw error;
      return null;
    }
  }

  /**
   * Makes, wraps (for exactly the verified members, keys checked against the pins), signs
   * and stores a new key. key_conflict: the winner's key is used (unless `force`, then
   * this client rotates on top of it); members_mismatch: the chain is read again.
   */
  async rotate(channelId, previousKeyId, { force = false } = {}) {
    const me = this.identity;
    let previous = previousKeyId;
    let lastError = new Error("rotation failed");
    for (let attempt = 0; attempt < 6; attempt++) {
      const chain = await this.refreshChain(channelId);
      if (!chain.members.includes(me.userId)) throw new UserError("not a member of this channel");
      const recipients = await this.recipientKeys(chain);
      const fresh = await wc.newChannelKey();
      const keyId = newUuid();
      let fields;
      try {
        const sig = await wc.sign(me.signKey,
          wc.keyText(channelId, keyId, previous, chain.version, fresh.digest));
        const encrypted = [];
        for (const r of recipients) {
          encrypted.push({ user_id: r.userId, encrypted_key: b64encode(await wc.oaepEncrypt(r.key, fresh.raw)) });
        }
        fields = {
          channel_id: channelId, key_id: keyId, previous_key_id: previous, membership_version: chain.version,
          digest: fresh.digest, sig, encrypted_keys: encrypted,
        };
      } finally {
        fresh.raw.fill(0);
      }
      const keep = (expiresAt) => {
        const key = {
          keyId, channelId, creatorId: me.userId, membershipVersion: chain.version, key: fresh.key, expiresAt,
        };
        this.channelKeys.set(keyId, key);
        this.sendKeys.set(channelId, keyId);
        this.noteKeyId(channelId, keyId);
        return key;
      };
      try {
        const result = await this.request("keys", fields);
        return keep(result.expires_at);
      } catch (error) {
        lastError = error;
        if (error instanceof RelayError && error.code === "key_conflict") {
          const newest = await this.newestKey(channelId);
          if (!force) {
            const winner = await this.adoptable(newest);
            if (winner) return winner;
          }
          previous = newest.key?.key_id || error.frame.current_key_id || null;
        } else if (error instanceof RelayError && error.code === "members_mismatch") {
          continue;
        } else if (error instanceof RelayError && error.retryable) {
          await sleep(error.retryAfterMs ?? 200);
        } else if (error instanceof Disconnected || error.code === "timeout") {
          // The key may have been stored before the reply was lost.
          const newest = await this.newestKey(channelId);
          if (newest.key && newest.key.key_id === keyId) return keep(newest.key.expires_at);
          const winner = force ? null : await this.adoptable(newest);
          if (winner) return winner;
          previous = newest.key?.key_id || null;
        } else {
          throw error;
        }
      }
    }
    throw lastError;
  }

  /** The public keys of exactly the chain's members, checked against the pins. */
  async recipientKeys(chain) {
    const list = await this.request("channel.members", { channel_id: chain.channelId });
    const out = [];
    for (const member of chain.members) {
      const listed = list.members.find((m) => m.user_id === member);
      const key = listed ? await this.trust(member, listed.public_key, listed.username) : await this.pinnedKey(member);
      out.push({ userId: member, key });
    }
    return out;
  }

  /** The key `keyId` of the channel, for reading: cached, or fetched and checked. */
  async channelKey(channelId, keyId) {
    const known = this.channelKeys.get(keyId);
    if (known) {
      if (known.channelId !== channelId) throw this.refuse(`key ${keyId} belongs to another channel`);
      return known;
    }
    let result;
    try {
      result = await this.request("key", { channel_id: channelId, key_id: keyId });
    } catch (error) {
      if (error instanceof RelayError && error.code === "not_found") throw new VerificationFailed("no copy of its key for this user");
      throw error;
    }
    const record = result.key;
    if (!record || record.key_id !== keyId || record.channel_id !== channelId) {
      throw this.refuse(`the relay answered with another key than ${keyId}`);
    }
    return this.accept(record);
  }

  /**
   * Checks a key record as §6 asks — the creator a member of that verified membership
   * version, the creator's signature by its pinned key, the unwrapped key matching the
   * digest — and caches the key. A failure is reported loudly.
   */
  async accept(record) {
    const known = this.channelKeys.get(record.key_id);
    if (known) {
      if (known.channelId !== record.channel_id) throw this.refuse(`key ${record.key_id} belongs to another channel`);
      return known;
    }
    if (!record.encrypted_key) throw new VerificationFailed(`key ${record.key_id} holds no copy for this user`);
    const chain = await this.verifiedChain(record.channel_id, record.membership_version);
    const fail = (why) => this.refuse(`key ${record.key_id} of ${record.channel_id}: ${why}`);
    const statement = chain.statement(record.membership_version);
    if (!statement) throw fail(`names membership version ${record.membership_version}, which is not verified`);
    if (!statement.members.includes(record.creator_id)) {
      throw fail(`its creator is not a member of membership version ${record.membership_version}`);
    }
    let creatorKey;
    try {
      creatorKey = await this.pinnedKey(record.creator_id);
    } catch (error) {
      if (isTransient(error)) throw error;
      throw fail("its creator's key is unknown");
    }
    const text = wc.keyText(record.channel_id, record.key_id, record.previous_key_id, record.membership_version, record.digest);
    if (!(await wc.verify(creatorKey, record.sig, text))) throw fail("the creator's signature does not verify");
    let key;
    try {
      key = await wc.unwrapChannelKey(this.identity.decryptKey, record.encrypted_key, record.digest);
    } catch (error) {
      throw fail(error.message);
    }
    const accepted = {
      keyId: record.key_id, channelId: record.channel_id, creatorId: record.creator_id,
      membershipVersion: record.membership_version, key, expiresAt: record.expires_at,
    };
    this.channelKeys.set(record.key_id, accepted);
    return accepted;
  }

  // ---------------------------------------------------------------- messages (§7)

  /**
   * Encrypts, signs and sends `text`. Expired or conflicting keys, changed membership and
   * dropped connections are handled inside (rotation, the winner's key, a retry with the
   * same client_msg_id). Returns {seq, duplicate}.
   */
  async send(channelId, text) {
    const me = this.identity;
    const clientMsgId = newUuid();
    let refused = null;
    let lastError = new Disconnected();
    for (let attempt = 0; attempt < SEND_ATTEMPTS; attempt++) {
      let keyId = null;
      try {
        const key = await this.keyForSending(channelId, refused);
        keyId = key.keyId;
        const ts = nowSeconds();
        const sealed = await wc.sealMessage(key.key, me.signKey, { body: text, channelId, ts });
        const result = await this.request("message", {
          channel_id: channelId, key_id: key.keyId, iv: sealed.iv, ciphertext: sealed.ciphertext, ts,
          client_msg_id: clientMsgId,
        });
        return { seq: result.seq, duplicate: !!result.duplicate };
      } catch (error) {
        lastError = error;
        if (error instanceof RelayError && error.code === "key_expired") {
          refused = keyId;
          if (keyId && this.sendKeys.get(channelId) === keyId) this.sendKeys.delete(channelId);
        } else if (error instanceof RelayError && error.retryable) {
          await sleep(error.retryAfterMs ?? 200);
        } else if (error instanceof Disconnected || error.code === "timeout") {
          continue; // the relay answers a repeated client_msg_id with the first result
        } else {
          throw error;
        }
      }
    }
    throw lastError;
  }

  /**
   * A page of history, decrypted and verified: with `after`, the first `limit` above it;
   * otherwise the newest below `before`. Returns {messages, hasMore}.
   */
  async history(channelId, { after = null, before = null, limit = 50 } = {}) {
    const page = await this.request("messages", {
      channel_id: channelId, ...(after !== null ? { after } : {}), ...(before !== null ? { before } : {}), limit,
    });
    const messages = [];
    for (const record of page.messages) {
      if (record.channel_id !== channelId) continue;
      const opened = await this.open(record);
      if (opened.later) throw opened.later;
      if (!opened.dropped) messages.push(opened);
    }
    return { messages, hasMore: page.has_more };
  }

  /**
   * Key (checked), decryption, format, the sender's signature with its pinned key, replay.
   * Returns a message {seq, senderId, verified, body, reason, ts, keyId}, {dropped}, or {later}.
   */
  async open(record) {
    for (let attempt = 1; ; attempt++) {
      try {
        const key = await this.channelKey(record.channel_id, record.key_id);
        const senderKey = await this.pinnedKey(record.sender_id);
        const content = await wc.openMessage(key.key, senderKey, record);
        if (content.verified && (await this.isReplay(record))) return { dropped: true };
        return this.shown(record, content);
      } catch (error) {
        if (isTransient(error)) {
          if (attempt >= 3) return { later: error };
          continue;
        }
        const reason = error instanceof VerificationFailed || error instanceof UserError
          ? error.message : "its key or sender could not be checked";
        return this.shown(record, { verified: false, reason });
      }
    }
  }

  shown(record, content) {
    return {
      channelId: record.channel_id, seq: record.seq, senderId: record.sender_id, keyId: record.key_id,
      ts: record.ts, receivedAt: record.received_at, verified: content.verified,
      body: content.verified ? content.body : null, reason: content.verified ? null : content.reason,
    };
  }

  /** A (key_id, iv) already seen under another seq is a replay (reading history again is not). */
  async isReplay(record) {
    const pair = `${record.key_id}|${record.iv}`;
    let first = this.seenPairs.get(pair);
    if (first === undefined) {
      const stored = await this.store.seen(this.identity.userId, record.key_id, record.iv);
      if (stored) first = stored.seq;
    }
    if (first !== undefined && first !== record.seq) {
      this.alert("replay", `a replayed message (seq ${record.seq}, first seen as seq ${first}) was dropped`,
        { channelId: record.channel_id });
      return true;
    }
    if (first === undefined) {
      this.seenPairs.set(pair, record.seq);
      await this.store.markSeen(this.identity.userId, record.key_id, record.iv, record.seq);
    }
    return false;
  }

  // ---------------------------------------------------------------- subscriptions (§8)

  /** Follows channels from the given positions (else the last delivered seq). */
  async subscribe(channelIds, after = {}) {
    const entries = channelIds.map((id) => {
      const seq = after[id] ?? this.positions.get(id)?.lastSeq ?? null;
      return { channel_id: id, ...(seq !== null ? { after: seq } : {}) };
    });
    for (const id of channelIds) this.followed.add(id);
    return this.request("subscribe", { channels: entries }, { onResult: (reply) => this.subscribed(reply, entries) });
  }

  /** Queued before any event that follows the reply, so delivery state is set up in order. */
  subscribed(reply, entries) {
    for (const c of reply.channels) {
      const asked = entries.find((e) => e.channel_id === c.channel_id);
      this.enqueue({ kind: "subscribed", channelId: c.channel_id, lastSeq: c.last_seq, replay: asked && "after" in asked,
        recovered: c.recovered });
    }
  }

  setPosition(channelId, change) {
    const current = this.positions.get(channelId) || { lastSeq: null, unread: 0 };
    const next = { ...current, ...change };
    this.positions.set(channelId, next);
    this.store.saveChannelState(this.identity.userId, channelId, next).catch(() => {});
    return next;
  }

  /** The UI tells which channel is shown: its unread count is cleared. */
  select(channelId) {
    this.selected = channelId;
    if (channelId && (this.positions.get(channelId)?.unread || 0) > 0) {
      this.setPosition(channelId, { unread: 0 });
      this.on.channels?.(this.channelList());
    }
  }

  enqueue(item) {
    this.inbox.push(item);
    if (!this.processing) this.drain();
  }

  async drain() {
    this.processing = true;
    while (this.inbox.length) {
      const item = this.inbox.shift();
      try {
        await this.process(item);
      } catch (error) {
        console.warn("parley: an event could not be handled:", error && error.message);
      }
    }
    this.processing = false;
  }

  async process(item) {
    if (!this.identity) return;
    if (item.kind === "subscribed") {
      const position = this.positions.get(item.channelId);
      if (!item.replay && (position?.lastSeq ?? null) === null) this.setPosition(item.channelId, { lastSeq: item.lastSeq });
      if (!item.recovered) await this.fillGap(item.channelId, item.lastSeq);
      return;
    }
    const frame = item.frame;
    switch (frame.type) {
      case "event.message":
        await this.deliver(frame);
        break;
      case "event.synced": {
        const last = this.positions.get(frame.channel_id)?.lastSeq ?? 0;
        if (frame.seq > last) this.setPosition(frame.channel_id, { lastSeq: frame.seq });
        break;
      }
      case "event.key":
        await this.keyEvent(frame);
        break;
      case "event.member":
        await this.memberEvent(frame);
        break;
      default:
        break;
    }
  }

  /** Every seq once, in order: older ones are dropped, a gap is paged from history first. */
  async deliver(record) {
    const channelId = record.channel_id;
    if (!this.followed.has(channelId)) return;
    const last = this.positions.get(channelId)?.lastSeq ?? null;
    if (last !== null) {
      if (record.seq <= last) return;
      if (record.seq > last + 1 && !(await this.fillGap(channelId, record.seq - 1))) return;
    }
    const opened = await this.open(record);
    if (opened.later) return; // left for the next message's gap fill or the next resume
    this.delivered(channelId, record.seq, opened);
  }

  delivered(channelId, seq, opened) {
    const position = this.positions.get(channelId) || { unread: 0 };
    const counts = !opened.dropped && opened.senderId !== this.identity.userId && this.selected !== channelId;
    this.setPosition(channelId, { lastSeq: seq, unread: (position.unread || 0) + (counts ? 1 : 0) });
    const channel = this.channels.get(channelId);
    if (channel && seq > channel.lastSeq) channel.lastSeq = seq;
    if (!opened.dropped) this.on.message?.(channelId, opened);
    this.on.channels?.(this.channelList());
  }

  /** Pages the messages after the last delivered seq up to `end` from history. */
  async fillGap(channelId, end) {
    let cursor = this.positions.get(channelId)?.lastSeq ?? 0;
    while (cursor < end) {
      let page;
      try {
        page = await this.request("messages", { channel_id: channelId, after: cursor, before: end + 1, limit: HISTORY_MAX });
      } catch {
        return false;
      }
      for (const record of page.messages) {
        if (record.channel_id !== channelId || record.seq <= cursor || record.seq > end) continue;
        const opened = await this.open(record);
        if (opened.later) return false;
        this.delivered(channelId, record.seq, opened);
        cursor = record.seq;
      }
      if (!page.has_more || page.messages.length === 0) break;
    }
    // Whatever lies below `end` and was not on a page is not visible to this member.
    const last = this.positions.get(channelId)?.lastSeq ?? 0;
    if (end > last) this.setPosition(channelId, { lastSeq: end });
    return true;
  }

  async keyEvent(record) {
    if (!record.encrypted_key) return;
    let key;
    try {
      key = await this.accept(record);
    } catch {
      return; // refused loudly inside, or retried when used
    }
    if (key.membershipVersion === this.chains.get(record.channel_id)?.version
      && key.expiresAt - KEY_EXPIRY_MARGIN_MS > Date.now()) {
      this.sendKeys.set(record.channel_id, key.keyId);
    }
    this.noteKeyId(record.channel_id, record.key_id);
  }

  /**
   * Verifies the event's statement as the next link (or one already verified), and that
   * the event says what the statement says, before acting on the change.
   */
  async memberEvent(event) {
    const channelId = event.channel_id;
    const statement = event.membership;
    const me = this.identity.userId;
    try {
      const known = this.chains.get(channelId);
      if (known && statement.version <= known.version) {
        const same = known.statement(statement.version);
        if (!same || same.sig !== statement.sig) {
          throw this.refuse(`event.member carries another version ${statement.version} than the verified one`);
        }
      } else if (known && statement.version === known.version + 1) {
        await this.verifyStatements(channelId, [statement]);
      } else {
        try {
          await this.refreshChain(channelId);
        } catch (error) {
          if (!(error instanceof RelayError && error.code === "not_member")) throw error;
          await this.verifyStatements(channelId, [statement]);
        }
        const stored = this.chains.get(channelId)?.statement(statement.version);
        if (!stored || stored.sig !== statement.sig) throw this.refuse("event.member's statement is not in the chain");
      }
      const chain = this.chains.get(channelId);
      if (!describes(event, chain)) throw this.refuse("event.member does not match its statement");
    } catch (error) {
      // A removal of this user stands even when it cannot be verified: the relay no longer
      // serves the channel to it, whatever the chain says.
      if (!(event.user_id === me && event.action === "removed")) return;
    }
    const sendKey = this.channelKeys.get(this.sendKeys.get(channelId));
    if (sendKey && sendKey.membershipVersion < statement.version) this.sendKeys.delete(channelId);
    if (event.user_id === me && event.action === "removed") {
      this.forgetChannel(channelId);
    } else if (event.user_id === me && event.action === "added") {
      await this.refreshChannels().catch(() => {});
      if (!this.followed.has(channelId)) {
        this.setPosition(channelId, { lastSeq: null, unread: 0 });
        await this.subscribe([channelId], { [channelId]: 0 }).catch(() => {});
      }
    } else {
      const channel = this.channels.get(channelId);
      if (channel) channel.membershipVersion = statement.version;
    }
    this.on.member?.(channelId, event);
  }

  // ---------------------------------------------------------------- test hooks

  dropConnection() {
    this.transport?.drop();
  }
}

/** Whether an event.member's user, action and signer are what its verified statement says. */
function describes(event, chain) {
  const st = event.membership;
  if (event.by !== st.signer_id) return false;
  if (st.version === 1) return event.action === "added" && st.members.includes(event.user_id);
  const previous = chain.statement(st.version - 1);
  if (!previous) return false;
  const change = changeBetween(previous, st);
  return !!change && change.action === event.action && change.userId === event.user_id;
}
