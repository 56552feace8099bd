// The page: screens, forms and lists over ParleyClient. Everything shown comes from the
// client's verified view; text is always set with textContent (never parsed as HTML).
// window.parleyTest is a small read-only hook for the browser tests: no secrets in it.

import { Store } from "./store.js";
import { ParleyClient, UserError, VerificationFailed } from "./client.js";
import { RelayError, relayUrl } from "./protocol.js";
import { requireWebCrypto } from "./crypto.js";
import { utf8 } from "./encoding.js";

const $ = (id) => document.getElementById(id);
const SELECTED = "parley.selected";
const PAGE = 50;
const MAX_BODY_BYTES = 60000;
const STATUS_TEXT = { connected: "connected", connecting: "connecting…", reconnecting: "reconnecting…", offline: "offline" };

const ui = {
  screen: "loading", // until main() has opened the store and shown a screen
  selected: null,
  pendingSelect: null,
  messages: new Map(),   // seq -> message of the selected channel
  hasOlder: false,
  loadingOlder: false,
  selectToken: 0,
  members: [],
  status: "offline",
};

let store = null;
let client = null;

// ---------------------------------------------------------------- screens

function show(screen) {
  ui.screen = screen;
  for (const name of ["welcome", "passkey", "chat"]) $(`screen-${name}`).hidden = name !== screen;
}

function showWelcome(error = "", username = "") {
  show("welcome");
  $("welcome-error").textContent = error;
  if (username) $("login-username").value = username;
  setBusy(false);
}

function setBusy(busy) {
  for (const id of ["signup-submit", "login-submit"]) $(id).disabled = busy;
}

function describeError(error) {
  if (error instanceof RelayError) {
    switch (error.code) {
      case "username_taken": return "That username is taken.";
      case "invalid_username": return "A username is 3 to 32 characters of a–z, 0–9, _ . and -.";
      case "auth_failed": return "Wrong username or passkey.";
      case "challenge_failed": return "The sign-in challenge failed; try again.";
      case "rate_limited": return "Too many attempts; wait a moment.";
      case "forbidden": return "Not allowed.";
      case "not_member": return "You are not a member of that channel.";
      case "not_found": return "Not found.";
      case "too_large": return "That message is too long.";
      default: return `The relay refused: ${error.code}.`;
    }
  }
  if (error instanceof UserError || error instanceof VerificationFailed) return error.message;
  if (error && error.code === "disconnected") return "No connection to the relay.";
  if (error && error.code === "timeout") return "The relay did not answer in time.";
  return error && error.message ? error.message : String(error);
}

// ---------------------------------------------------------------- welcome and passkey

async function onSignup(event) {
  event.preventDefault();
  const username = $("signup-username").value.trim();
  $("welcome-error").textContent = "";
  if (!/^[a-z0-9_.-]{3,32}$/.test(username)) {
    $("welcome-error").textContent = "A username is 3 to 32 characters of a–z, 0–9, _ . and -.";
    return;
  }
  setBusy(true);
  $("signup-submit").textContent = "Making your key…";
  try {
    const passkey = await client.signup(username);
    $("passkey").textContent = passkey;
    $("passkey-note").textContent = "";
    $("passkey-copy").textContent = "Copy";
    show("passkey");
  } catch (error) {
    $("welcome-error").textContent = describeError(error);
  } finally {
    $("signup-submit").textContent = "Create account";
    setBusy(false);
  }
}

async function onLogin(event) {
  event.preventDefault();
  const username = $("login-username").value.trim();
  const passkey = $("login-passkey").value.trim();
  $("welcome-error").textContent = "";
  setBusy(true);
  try {
    await client.login(username, passkey);
    $("login-passkey").value = "";
    enterChat();
  } catch (error) {
    $("welcome-error").textContent = describeError(error);
  } finally {
    setBusy(false);
  }
}

async function onCopyPasskey() {
  const text = $("passkey").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("passkey-copy").textContent = "Copied";
    $("passkey-note").textContent = "Copied to the clipboard.";
  } catch {
    // Clipboard refused (no permission, no focus): select the text for a manual copy.
    const range = document.createRange();
    range.selectNodeContents($("passkey"));
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    $("passkey-note").textContent = "Copying was refused by the browser: the passkey is selected, copy it by hand.";
  }
}

function onPasskeyDone() {
  $("passkey").textContent = ""; // shown once: gone from the page now
  $("passkey-note").textContent = "";
  enterChat();
}

// ---------------------------------------------------------------- chat

function enterChat() {
  show("chat");
  const me = client.me;
  $("me").textContent = me.username;
  $("my-fingerprint").textContent = client.fingerprintOf(me.userId) || "";
  $("chat-error").textContent = "";
  ui.pendingSelect = sessionStorage.getItem(SELECTED);
  renderChannels(client.channelList());
  renderAlerts();
  if (!ui.selected) renderSelection();
}

function setStatus(state) {
  ui.status = state;
  const el = $("status");
  el.dataset.state = state;
  el.textContent = STATUS_TEXT[state] || state;
}

function chatError(error) {
  $("chat-error").textContent = error ? describeError(error) : "";
}

function renderChannels(list) {
  const ul = $("channel-list");
  const byId = new Map([...ul.children].map((li) => [li.dataset.channelId, li]));
  const sorted = [...list].sort((a, b) => a.name.localeCompare(b.name) || (a.channelId < b.channelId ? -1 : 1));
  const seen = new Set();
  sorted.forEach((c, index) => {
    seen.add(c.channelId);
    let li = byId.get(c.channelId);
    if (!li) {
      li = document.createElement("li");
      li.dataset.channelId = c.channelId;
      li.tabIndex = 0;
      li.setAttribute("role", "button");
      const name = document.createElement("span");
      name.className = "name";
      const unread = document.createElement("span");
      unread.className = "unread";
      li.append(name, unread);
      li.addEventListener("click", () => selectChannel(c.channelId));
      li.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          selectChannel(c.channelId);
        }
      });
    }
    li.querySelector(".name").textContent = c.name;
    const unread = li.querySelector(".unread");
    unread.dataset.count = String(c.unread);
    unread.textContent = c.unread > 0 ? String(c.unread) : "";
    li.classList.toggle("selected", c.channelId === ui.selected);
    li.setAttribute("aria-current", c.channelId === ui.selected ? "true" : "false");
    if (ul.children[index] !== li) ul.insertBefore(li, ul.children[index] || null);
  });
  for (const [id, li] of byId) if (!seen.has(id)) li.remove();

  if (ui.selected && !seen.has(ui.selected)) {
    ui.selected = null;
    sessionStorage.removeItem(SELECTED);
    client.select(null);
    renderSelection();
  }
  if (!ui.selected && ui.pendingSelect && seen.has(ui.pendingSelect)) {
    const id = ui.pendingSelect;
    ui.pendingSelect = null;
    selectChannel(id);
  }
}

function renderSelection() {
  const selected = ui.selected ? client.channels.get(ui.selected) : null;
  $("channel-title").textContent = selected ? selected.name : "No channel selected";
  for (const id of ["composer-text", "composer-send", "add-member-username", "add-member-submit", "rotate-key",
    "leave-channel"]) {
    $(id).disabled = !selected;
  }
  if (!selected) {
    $("messages").replaceChildren();
    $("members").replaceChildren();
    $("load-older").hidden = true;
    ui.messages.clear();
    ui.members = [];
  }
}

async function selectChannel(channelId) {
  if (ui.selected === channelId) return;
  ui.selected = channelId;
  sessionStorage.setItem(SELECTED, channelId);
  const token = ++ui.selectToken;
  client.select(channelId);
  ui.messages.clear();
  ui.hasOlder = false;
  $("messages").replaceChildren();
  $("load-older").hidden = true;
  chatError(null);
  renderChannels(client.channelList());
  renderSelection();
  refreshMembers();
  try {
    const page = await client.history(channelId, { limit: PAGE });
    if (token !== ui.selectToken) return;
    for (const m of page.messages) addMessage(m);
    ui.hasOlder = page.hasMore;
    $("load-older").hidden = !ui.hasOlder;
    scrollToBottom();
  } catch (error) {
    if (token === ui.selectToken) chatError(error);
  }
}

function scrollToBottom() {
  const scroller = $("message-scroller");
  scroller.scrollTop = scroller.scrollHeight;
}

function nearBottom() {
  const s = $("message-scroller");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
}

function addMessage(m) {
  if (ui.messages.has(m.seq)) return;
  ui.messages.set(m.seq, m);
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.seq = String(m.seq);
  li.dataset.senderId = m.senderId;
  li.dataset.verified = m.verified ? "true" : "false";
  if (m.senderId === client.me?.userId) li.classList.add("own");
  const head = document.createElement("div");
  head.className = "meta";
  const sender = document.createElement("span");
  sender.className = "sender";
  sender.textContent = client.username(m.senderId) || m.senderId.slice(0, 8);
  const time = document.createElement("time");
  time.className = "ts";
  const date = new Date(m.ts * 1000);
  time.dateTime = date.toISOString();
  time.textContent = date.toLocaleString(undefined, { hour: "2-digit", minute: "2-digit", day: "numeric", month: "short" });
  head.append(sender, time);
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = m.verified ? m.body : `unverifiable: ${m.reason}`;
  if (!m.verified) {
    const mark = document.createElement("span");
    mark.className = "unverified-mark";
    mark.textContent = "⚠ not verified";
    head.append(mark);
  }
  li.append(head, body);
  if (!client.username(m.senderId)) {
    client.usernameOf(m.senderId).then((name) => {
      if (name) for (const el of document.querySelectorAll(`li.message[data-sender-id="${m.senderId}"] .sender`)) el.textContent = name;
    });
  }
  // Keep seq order.
  const ol = $("messages");
  let before = null;
  for (const child of ol.children) {
    if (Number(child.dataset.seq) > m.seq) {
      before = child;
      break;
    }
  }
  ol.insertBefore(li, before);
}

async function loadOlder() {
  if (!ui.selected || ui.loadingOlder || !ui.hasOlder) return;
  const oldest = Math.min(...ui.messages.keys());
  if (!Number.isFinite(oldest)) return;
  ui.loadingOlder = true;
  const token = ui.selectToken;
  const scroller = $("message-scroller");
  const fromBottom = scroller.scrollHeight - scroller.scrollTop;
  try {
    const page = await client.history(ui.selected, { before: oldest, limit: PAGE });
    if (token !== ui.selectToken) return;
    for (const m of page.messages) addMessage(m);
    ui.hasOlder = page.hasMore;
    $("load-older").hidden = !ui.hasOlder;
    scroller.scrollTop = scroller.scrollHeight - fromBottom;
  } catch (error) {
    chatError(error);
  } finally {
    ui.loadingOlder = false;
  }
}

async function refreshMembers() {
  const channelId = ui.selected;
  if (!channelId) return;
  try {
    const members = await client.members(channelId);
    if (channelId !== ui.selected) return;
    ui.members = members;
    renderMembers();
  } catch (error) {
    if (channelId === ui.selected) chatError(error);
  }
}

function renderMembers() {
  const me = client.me.userId;
  const iOwn = ui.members.some((m) => m.userId === me && m.role === "owner");
  const items = ui.members.map((m) => {
    const li = document.createElement("li");
    li.dataset.userId = m.userId;
    if (m.keyChanged) li.classList.add("key-changed");
    const name = document.createElement("span");
    name.className = "username";
    name.textContent = m.username;
    if (m.userId === me) name.classList.add("self");
    const role = document.createElement("span");
    role.className = "role";
    role.textContent = m.role;
    const fp = document.createElement("span");
    fp.className = "fingerprint";
    fp.textContent = m.fingerprint;
    fp.title = m.keyChanged ? `pinned key; the relay now presents ${m.presented}` : "SHA-256 of this member's public key";
    li.append(name, role, fp);
    if (iOwn && m.userId !== me) {
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove-member secondary small";
      remove.textContent = "Remove";
      remove.addEventListener("click", () => onRemoveMember(m.userId, remove));
      li.append(remove);
    }
    return li;
  });
  $("members").replaceChildren(...items);
}

async function onRemoveMember(userId, button) {
  const channelId = ui.selected;
  button.disabled = true;
  chatError(null);
  try {
    await client.removeMember(channelId, userId);
  } catch (error) {
    chatError(error);
  } finally {
    button.disabled = false;
    if (channelId === ui.selected) refreshMembers();
  }
}

async function onAddMember(event) {
  event.preventDefault();
  const channelId = ui.selected;
  const username = $("add-member-username").value.trim();
  if (!channelId || !username) return;
  $("add-member-submit").disabled = true;
  chatError(null);
  try {
    await client.addMember(channelId, username);
    $("add-member-username").value = "";
  } catch (error) {
    chatError(error);
  } finally {
    $("add-member-submit").disabled = !ui.selected;
    if (channelId === ui.selected) refreshMembers();
  }
}

async function onLeave() {
  const channelId = ui.selected;
  if (!channelId) return;
  $("leave-channel").disabled = true;
  chatError(null);
  try {
    await client.leave(channelId);
  } catch (error) {
    chatError(error);
    $("leave-channel").disabled = false;
  }
}

async function onRotate() {
  const channelId = ui.selected;
  if (!channelId) return;
  $("rotate-key").disabled = true;
  chatError(null);
  try {
    await client.rotateKey(channelId);
  } catch (error) {
    chatError(error);
  } finally {
    $("rotate-key").disabled = !ui.selected;
  }
}

async function onNewChannel(event) {
  event.preventDefault();
  const name = $("new-channel-name").value.trim();
  const members = $("new-channel-members").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (!name) {
    chatError(new UserError("A channel needs a name."));
    return;
  }
  $("new-channel-submit").disabled = true;
  chatError(null);
  try {
    const channelId = await client.createChannel(name, members);
    $("new-channel-name").value = "";
    $("new-channel-members").value = "";
    renderChannels(client.channelList());
    await selectChannel(channelId);
  } catch (error) {
    chatError(error);
  } finally {
    $("new-channel-submit").disabled = false;
  }
}

async function onSend(event) {
  if (event) event.preventDefault();
  const channelId = ui.selected;
  const box = $("composer-text");
  const text = box.value;
  if (!channelId || text.trim() === "") return;
  if (utf8(text).length > MAX_BODY_BYTES) {
    chatError(new UserError("That message is too long."));
    return;
  }
  box.value = "";
  chatError(null);
  try {
    await client.send(channelId, text);
  } catch (error) {
    chatError(error);
    if (box.value === "") box.value = text;
  }
}

async function onLogout() {
  await client.logout();
  resetChat();
  showWelcome("");
}

function resetChat() {
  ui.selected = null;
  ui.pendingSelect = null;
  ui.messages.clear();
  ui.members = [];
  sessionStorage.removeItem(SELECTED);
  $("channel-list").replaceChildren();
  $("messages").replaceChildren();
  $("members").replaceChildren();
  $("key-warning").hidden = true;
  $("key-warning").replaceChildren();
  renderAlerts();
  setStatus("offline");
}

// ---------------------------------------------------------------- alerts

function renderAlerts() {
  const alerts = client ? client.alerts : [];
  const changed = alerts.filter((a) => a.kind === "keyChanged");
  const warning = $("key-warning");
  if (changed.length) {
    const lines = changed.map((a) => {
      const p = document.createElement("p");
      const strong = document.createElement("strong");
      strong.textContent = `⚠ The key of ${a.username} has changed.`;
      p.append(strong, ` Pinned fingerprint ${a.pinned}; the relay now presents ${a.presented}. `
        + "The new key is refused: nothing is encrypted for it and nothing signed with it is trusted. "
        + "Check with this person out of band.");
      return p;
    });
    warning.replaceChildren(...lines);
    warning.hidden = false;
  } else {
    warning.replaceChildren();
    warning.hidden = true;
  }
  const others = alerts.filter((a) => a.kind !== "keyChanged");
  const box = $("alerts");
  box.replaceChildren(...others.slice(-5).map((a) => {
    const p = document.createElement("p");
    p.textContent = `Security: ${a.text}`;
    return p;
  }));
  box.hidden = others.length === 0;
}

// ---------------------------------------------------------------- client events

function onClientMessage(channelId, message) {
  if (channelId !== ui.selected) return;
  const stick = nearBottom();
  addMessage(message);
  if (stick || message.senderId === client.me?.userId) scrollToBottom();
}

function onClientMember(channelId, event) {
  if (channelId === ui.selected) refreshMembers();
  if (event.user_id === client.me?.userId && event.action === "removed") {
    renderChannels(client.channelList());
  }
}

function onSessionEnded() {
  const username = $("me").textContent;
  resetChat();
  showWelcome("Your session has ended: log in again.", username);
}

// ---------------------------------------------------------------- test hook

function testState() {
  const me = client && client.me;
  return {
    screen: ui.screen,
    userId: me ? me.userId : null,
    username: me ? me.username : null,
    channelId: ui.selected,
    connected: !!(client && client.connected),
    channels: client ? client.channelList().map((c) => ({ channelId: c.channelId, name: c.name, unread: c.unread, lastSeq: c.lastSeq })) : [],
    messages: [...ui.messages.values()].sort((a, b) => a.seq - b.seq)
      .map((m) => ({ seq: m.seq, senderId: m.senderId, verified: m.verified, body: m.verified ? m.body : `unverifiable: ${m.reason}` })),
    keyId: client && ui.selected ? client.currentKeyId(ui.selected) : null,
    alerts: client ? client.alerts.map((a) => a.text) : [],
  };
}

Object.defineProperty(window, "parleyTest", {
  value: Object.freeze({ state: testState }),
  writable: false,
  configurable: false,
});

// ---------------------------------------------------------------- start

function wire() {
  $("signup-form").addEventListener("submit", onSignup);
  $("login-form").addEventListener("submit", onLogin);
  $("passkey-copy").addEventListener("click", onCopyPasskey);
  $("passkey-done").addEventListener("click", onPasskeyDone);
  $("logout").addEventListener("click", onLogout);
  $("new-channel-form").addEventListener("submit", onNewChannel);
  $("composer").addEventListener("submit", onSend);
  $("composer-text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      onSend(null);
    }
  });
  $("load-older").addEventListener("click", loadOlder);
  $("message-scroller").addEventListener("scroll", () => {
    if ($("message-scroller").scrollTop < 40) loadOlder();
  });
  $("add-member-form").addEventListener("submit", onAddMember);
  $("leave-channel").addEventListener("click", onLeave);
  $("rotate-key").addEventListener("click", onRotate);
}

async function main() {
  wire();
  setStatus("offline");
  try {
    requireWebCrypto();
    store = await Store.open();
  } catch (error) {
    showWelcome(describeError(error));
    setBusy(true);
    return;
  }
  client = new ParleyClient({
    url: relayUrl(location),
    store,
    on: {
      state: setStatus,
      channels: (list) => { if (ui.screen === "chat") renderChannels(list); },
      message: onClientMessage,
      member: onClientMember,
      key: () => {},
      alert: renderAlerts,
      sessionEnded: onSessionEnded,
    },
  });
  const account = store.currentAccount();
  try {
    if (account && (await client.resume(account))) {
      enterChat();
      return;
    }
  } catch (error) {
    showWelcome(describeError(error), account);
    return;
  }
  showWelcome("", account || "");
}

main();
