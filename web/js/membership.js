// A channel's signed membership chain (§5, §10 "Channels") as this client verified it: the
// same rules the relay applies, checked for every statement from version 1, signatures by
// the signers' pinned keys. Only a member list read from a verified chain is trusted — in
// particular before a channel key is wrapped for anyone. No I/O: signatures are checked
// through the `verify(signerId, text, sig)` function the caller passes.

import { membershipText, statementHash } from "./crypto.js";

export const MAX_MEMBERS = 1000;

export class ChainError extends Error {}

function sameStatement(a, b) {
  return a.version === b.version && a.prev === b.prev && a.ts === b.ts && a.owner_id === b.owner_id
    && a.signer_id === b.signer_id && a.sig === b.sig
    && [...a.members].sort().join(",") === [...b.members].sort().join(",");
}

function wellFormed(st) {
  return st && Number.isSafeInteger(st.version) && st.version >= 1 && typeof st.prev === "string"
    && Number.isSafeInteger(st.ts) && st.ts >= 0 && typeof st.owner_id === "string"
    && Array.isArray(st.members) && st.members.every((m) => typeof m === "string")
    && typeof st.signer_id === "string" && typeof st.sig === "string";
}

/** The one member added or removed from `previous` to `next`, or null. */
export function changeBetween(previous, next) {
  const before = new Set(previous.members);
  const after = new Set(next.members);
  const added = [...after].filter((m) => !before.has(m));
  const removed = [...before].filter((m) => !after.has(m));
  if (added.length === 1 && removed.length === 0) return { action: "added", userId: added[0] };
  if (removed.length === 1 && added.length === 0) return { action: "removed", userId: removed[0] };
  return null;
}

/**
 * Who takes over when the owner `leaving` leaves: the remaining member whose latest join
 * came in the earliest version, ties to the smaller id (the relay's rule read off the chain).
 */
export function successor(statements, leaving) {
  const last = statements[statements.length - 1];
  if (!last) return null;
  const joinedIn = new Map();
  let previous = new Set();
  for (const st of statements) {
    const current = new Set(st.members);
    for (const m of current) if (!previous.has(m)) joinedIn.set(m, st.version);
    previous = current;
  }
  const candidates = last.members.filter((m) => m !== leaving);
  candidates.sort((a, b) => {
    const ja = joinedIn.get(a) ?? Infinity;
    const jb = joinedIn.get(b) ?? Infinity;
    if (ja !== jb) return ja - jb;
    return a < b ? -1 : a > b ? 1 : 0;
  });
  return candidates[0] ?? null;
}

export class MembershipChain {
  constructor(channelId) {
    this.channelId = channelId;
    this.statements = [];
    this.headHash = "";
  }

  get latest() {
    return this.statements[this.statements.length - 1] ?? null;
  }

  get version() {
    return this.latest ? this.latest.version : 0;
  }

  get members() {
    return this.latest ? [...this.latest.members] : [];
  }

  get owner() {
    return this.latest && this.latest.owner_id ? this.latest.owner_id : null;
  }

  statement(version) {
    return version >= 1 && version <= this.statements.length ? this.statements[version - 1] : null;
  }

  clone() {
    const copy = new MembershipChain(this.channelId);
    copy.statements = [...this.statements];
    copy.headHash = this.headHash;
    return copy;
  }

  /**
   * Verifies `more` as the continuation of this chain and returns the longer chain (this
   * one is left as it was). Statements already verified must be identical (else a fork);
   * the rest must follow without a gap. Throws ChainError naming the version and why.
   */
  async extended(more, verify) {
    const chain = this.clone();
    for (const st of [...more].sort((a, b) => a.version - b.version)) {
      await chain.append(st, verify);
    }
    return chain;
  }

  async append(st, verify) {
    const fail = (why) => new ChainError(`membership of ${this.channelId}, version ${st && st.version}: ${why}`);
    if (!wellFormed(st)) throw fail("malformed statement");
    if (st.version <= this.version) {
      if (!sameStatement(this.statement(st.version), st)) throw fail("differs from the version already verified (a fork)");
      return;
    }
    if (st.version !== this.version + 1) throw fail(`does not follow version ${this.version}`);
    if (new Set(st.members).size !== st.members.length) throw fail("members has duplicates");
    const previous = this.latest;
    if (!previous) {
      if (st.prev !== "") throw fail("version 1 has a prev");
      if (!st.owner_id) throw fail("version 1 has no owner");
      if (st.members.length < 1 || st.members.length > MAX_MEMBERS) throw fail("member count out of range");
      if (st.signer_id !== st.owner_id) throw fail("version 1 is not signed by its owner");
      if (!st.members.includes(st.owner_id)) throw fail("the owner is not a member");
    } else {
      if (!previous.owner_id || previous.members.length === 0) throw fail("the channel is closed");
      if (st.prev !== this.headHash) throw fail(`prev is not the hash of version ${previous.version}`);
      const change = changeBetween(previous, st);
      if (!change) throw fail("does not add or remove exactly one member");
      if (st.members.length > MAX_MEMBERS) throw fail("too many members");
      const leaving = change.action === "removed" && change.userId === st.signer_id;
      if (!leaving && st.signer_id !== previous.owner_id) throw fail(`not signed by the owner of version ${previous.version}`);
      if (change.action === "removed" && change.userId === previous.owner_id) {
        if (st.members.length === 0) {
          if (st.owner_id !== "") throw fail("the last member's statement names an owner");
        } else if (st.owner_id !== successor(this.statements, change.userId)) {
          throw fail("owner_id is not the longest-standing member");
        }
      } else if (st.owner_id !== previous.owner_id) {
        throw fail("owner_id changes although the owner stays");
      }
      if (st.ts < previous.ts) throw fail(`ts is earlier than version ${previous.version}'s`);
    }
    if (!(await verify(st.signer_id, membershipText(this.channelId, st), st.sig))) {
      throw fail("the signature does not verify");
    }
    this.statements.push(st);
    this.headHash = await statementHash(this.channelId, st);
  }

  /**
   * The next statement (unsigned) after the verified head, adding or removing `userId`,
   * signed by `signerId`. An owner leaving hands over to the longest-standing member.
   */
  next({ adding, userId, signerId, now }) {
    const head = this.latest;
    if (!head) throw new ChainError("the channel's membership chain is unknown");
    if (!head.owner_id || head.members.length === 0) throw new ChainError("the channel is closed");
    const members = new Set(head.members);
    if (adding) {
      if (members.has(userId)) throw new ChainError("already a member");
      members.add(userId);
    } else {
      if (!members.has(userId)) throw new ChainError("not a member");
      members.delete(userId);
    }
    let owner = head.owner_id;
    if (!adding && userId === head.owner_id) owner = members.size === 0 ? "" : successor(this.statements, userId);
    return {
      version: head.version + 1,
      prev: this.headHash,
      ts: Math.max(now, head.ts),
      owner_id: owner,
      members: [...members].sort(),
      signer_id: signerId,
    };
  }

  /** Version 1 of a new channel (unsigned): the owner and `members`. */
  static first({ ownerId, members, now }) {
    const all = new Set(members);
    all.add(ownerId);
    return { version: 1, prev: "", ts: now, owner_id: ownerId, members: [...all].sort(), signer_id: ownerId };
  }
}
