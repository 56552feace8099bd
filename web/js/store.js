// What this browser keeps in IndexedDB (database "parley"):
//   identities  {username, userId, spki, decryptKey, signKey, session}  — the two private
//               keys are non-extractable CryptoKeys (structured clone keeps them as such);
//               `session` is null after logout. The passkey is never stored.
//   pins        {account, userId, fingerprint, spki, username}  — trust on first sight,
//               per local account.
//   seen        {account, keyId, iv, seq}  — (key_id, iv) pairs already shown, for replay drop.
//   channels    {account, channelId, lastSeq, unread}  — resume positions and unread counts.
// The account whose page this is lives in sessionStorage (per tab, survives a reload), and
// the last one used in localStorage (a new tab picks it up); neither holds a secret.

const DB_NAME = "parley";
const DB_VERSION = 1;
const TAB_ACCOUNT = "parley.account";

function promised(request) {
  return new Promise((resolve, reject) => {
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

export class Store {
  constructor(db) {
    this.db = db;
  }

  static async open() {
    const request = indexedDB.open(DB_NAME, DB_VERSION);
    request.onupgradeneeded = () => {
      const db = request.result;
      db.createObjectStore("identities", { keyPath: "username" });
      db.createObjectStore("pins", { keyPath: ["account", "userId"] });
      db.createObjectStore("seen", { keyPath: ["account", "keyId", "iv"] });
      db.createObjectStore("channels", { keyPath: ["account", "channelId"] });
    };
    return new Store(await promised(request));
  }

  async get(storeName, key) {
    return promised(this.db.transaction(storeName).objectStore(storeName).get(key));
  }

  async put(storeName, value) {
    const tx = this.db.transaction(storeName, "readwrite");
    tx.objectStore(storeName).put(value);
    return new Promise((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error);
    });
  }

  async all(storeName, account) {
    const range = IDBKeyRange.bound([account], [account, []]);
    return promised(this.db.transaction(storeName).objectStore(storeName).getAll(range));
  }

  // --- identities

  identity(username) {
    return this.get("identities", username);
  }

  saveIdentity(identity) {
    return this.put("identities", identity);
  }

  async setSession(username, session) {
    const identity = await this.identity(username);
    if (identity) await this.saveIdentity({ ...identity, session });
  }

  /** The account this tab was using (after a reload), else the last one used here. */
  currentAccount() {
    return sessionStorage.getItem(TAB_ACCOUNT) || localStorage.getItem(TAB_ACCOUNT);
  }

  setCurrentAccount(username) {
    if (username) {
      sessionStorage.setItem(TAB_ACCOUNT, username);
      localStorage.setItem(TAB_ACCOUNT, username);
    } else {
      sessionStorage.removeItem(TAB_ACCOUNT);
      localStorage.removeItem(TAB_ACCOUNT);
    }
  }

  // --- pins

  pins(account) {
    return this.all("pins", account);
  }

  savePin(account, pin) {
    return this.put("pins", { account, ...pin });
  }

  // --- replay guard

  seen(account, keyId, iv) {
    return this.get("seen", [account, keyId, iv]);
  }

  markSeen(account, keyId, iv, seq) {
    return this.put("seen", { account, keyId, iv, seq });
  }

  // --- per-channel positions

  channelStates(account) {
    return this.all("channels", account);
  }

  saveChannelState(account, channelId, state) {
    return this.put("channels", { account, channelId, lastSeq: state.lastSeq ?? null, unread: state.unread ?? 0 });
  }
}
