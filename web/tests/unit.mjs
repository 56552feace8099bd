// Checks of the pure modules (encodings, crypto, membership rules) that run without a
// browser: `node web/tests/unit.mjs` (Node 20 has WebCrypto). Exit status 1 on a failure.
import { b64decode, b64encode } from "../js/encoding.js";
import * as wc from "../js/crypto.js";
import { MembershipChain, successor } from "../js/membership.js";
const ok = (c, m) => { if (!c) { console.log("FAIL", m); process.exitCode = 1; } else console.log("ok", m); };
const throws = (f, m) => { try { f(); ok(false, m); } catch { ok(true, m); } };
throws(() => b64decode("QQ"), "unpadded refused");
throws(() => b64decode("QR=="), "non-canonical refused");
throws(() => b64decode("Q Q=="), "whitespace refused");
throws(() => b64decode("-_8="), "url alphabet refused");
ok(b64encode(b64decode("AAEC")) === "AAEC", "round trip");
// chain
const users = {};
for (const n of ["a", "b", "c"]) {
  const k = await wc.generateAccountKey();
  users[n] = { id: n === "a" ? "00000000-0000-4000-8000-00000000000a" : n === "b" ? "00000000-0000-4000-8000-00000000000b" : "00000000-0000-4000-8000-00000000000c", k, pub: await wc.importPublicKey(b64encode(k.spki)) };
}
const byId = Object.fromEntries(Object.values(users).map(u => [u.id, u]));
const verify = async (signer, text, sig) => !!byId[signer] && wc.verify(byId[signer].pub, sig, text);
const ch = "11111111-1111-4111-8111-111111111111";
const signAs = async (u, st) => ({ ...st, sig: await wc.sign(u.k.signKey, wc.membershipText(ch, st)) });
let chain = new MembershipChain(ch);
const v1 = await signAs(users.a, MembershipChain.first({ ownerId: users.a.id, members: [users.b.id], now: 100 }));
chain = await chain.extended([v1], verify);
ok(chain.version === 1 && chain.owner === users.a.id, "v1 accepted");
const v2 = await signAs(users.a, chain.next({ adding: true, userId: users.c.id, signerId: users.a.id, now: 101 }));
chain = await chain.extended([v2], verify);
ok(chain.members.length === 3, "v2 add accepted");
// b (not owner) tries to remove c
const bad = await signAs(users.b, chain.next({ adding: false, userId: users.c.id, signerId: users.b.id, now: 102 }));
try { await chain.extended([bad], verify); ok(false, "non-owner removal refused"); } catch (e) { ok(true, "non-owner removal refused: " + e.message); }
// owner leaves: successor must be b (joined v1), not c
ok(successor(chain.statements, users.a.id) === users.b.id, "successor is longest-standing");
const leave = await signAs(users.a, chain.next({ adding: false, userId: users.a.id, signerId: users.a.id, now: 103 }));
ok(leave.owner_id === users.b.id, "leave names successor");
const wrongOwner = await signAs(users.a, { ...leave, owner_id: users.c.id, sig: undefined });
try { await chain.extended([wrongOwner], verify); ok(false, "wrong successor refused"); } catch (e) { ok(true, "wrong successor refused: " + e.message); }
// fork of v2
const fork = await signAs(users.a, { ...v2, ts: 105, sig: undefined });
try { await chain.extended([fork], verify); ok(false, "fork refused"); } catch (e) { ok(true, "fork refused: " + e.message); }
// two changes at once
const two = await signAs(users.a, { ...chain.next({ adding: false, userId: users.c.id, signerId: users.a.id, now: 106 }), members: [users.a.id] });
try { await chain.extended([two], verify); ok(false, "two changes refused"); } catch (e) { ok(true, "two changes refused: " + e.message); }
// bad prev
const badPrev = await signAs(users.a, { ...chain.next({ adding: false, userId: users.c.id, signerId: users.a.id, now: 106 }), prev: "AAAA" });
try { await chain.extended([badPrev], verify); ok(false, "bad prev refused"); } catch (e) { ok(true, "bad prev refused: " + e.message); }
chain = await chain.extended([leave], verify);
ok(chain.owner === users.b.id && chain.version === 3, "owner leave accepted");
// key record + message roundtrip
const fresh = await wc.newChannelKey();
const wrapped = b64encode(await wc.oaepEncrypt(users.b.pub, fresh.raw));
const k = await wc.unwrapChannelKey(users.b.k.decryptKey, wrapped, fresh.digest);
const sealed = await wc.sealMessage(fresh.key, users.a.k.signKey, { body: "héllo", channelId: ch, ts: 7 });
const opened = await wc.openMessage(k, users.a.pub, { ...sealed, channel_id: ch, ts: 7 });
ok(opened.verified && opened.body === "héllo", "seal/open roundtrip");
const wrongTs = await wc.openMessage(k, users.a.pub, { ...sealed, channel_id: ch, ts: 8 });
ok(!wrongTs.verified, "other ts unverifiable");
try { await wc.unwrapChannelKey(users.b.k.decryptKey, wrapped, b64encode(new Uint8Array(32))); ok(false, "digest mismatch refused"); } catch { ok(true, "digest mismatch refused"); }
