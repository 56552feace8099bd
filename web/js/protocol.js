// The WebSocket transport (§1, §3, §8): one connection at a time to ws(s)://<host>/ws with
// subprotocol parley.v1, request ids, results vs errors, events, and reconnecting with
// exponential backoff and jitter. After each (re)connect, `restore` runs on the new socket
// (the client `auth`s and resubscribes with `after`) before other requests may use it.

export const SUBPROTOCOL = "parley.v1";

/** A relay error frame: `code`, `message`, and `retryAfterMs` when the relay says so. */
export class RelayError extends Error {
  constructor(frame) {
    super(`${frame.code}: ${frame.message || ""}`);
    this.code = frame.code;
    this.frame = frame;
    this.retryAfterMs = typeof frame.retry_after_ms === "number" ? frame.retry_after_ms : null;
  }

  /** Not applied by the relay and safe to send again (§10). */
  get retryable() {
    return this.code === "rate_limited" || this.code === "unavailable" || this.code === "internal";
  }
}

/** The connection dropped (or was never there) before the reply came. */
export class Disconnected extends Error {
  constructor(message = "disconnected") {
    super(message);
    this.code = "disconnected";
  }
}

export class Timeout extends Error {
  constructor(type) {
    super(`no reply to ${type} in time`);
    this.code = "timeout";
  }
}

/** Any failure of the path to the relay rather than of the request. */
export function isTransient(error) {
  return error instanceof Disconnected || error instanceof Timeout || (error instanceof RelayError && error.retryable);
}

export function relayUrl(location) {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws`;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * states: "connecting" (first connection), "connected" (open and restored),
 * "reconnecting" (after a drop), "offline" (stopped).
 */
export class Transport {
  /**
   * onEvent(frame): every event, in arrival order, synchronously from the socket handler.
   * onState(state): connection state changes.
   * restore(send): run on each new socket before it is ready; `send(type, fields, onResult)`
   *   is a request on that socket. An error with `sessionEnded` stops reconnecting
   *   (then onSessionEnded runs).
   */
  constructor(url, { onEvent, onState, restore, requestTimeoutMs = 15000 }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState;
    this.restore = restore;
    this.requestTimeoutMs = requestTimeoutMs;
    this.socket = null;
    this.ready = false;
    this.stopped = true;
    this.state = "offline";
    this.pending = new Map();
    this.counter = 0;
    this.waiters = [];
    this.attempt = 0;
    this.everConnected = false;
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.onState?.(state);
  }

  /** Starts connecting (and keeps reconnecting until stop()). */
  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.attempt = 0;
    this.connectLoop().catch(() => {});
  }

  stop() {
    this.stopped = true;
    this.ready = false;
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close(1000);
    this.failPending(new Disconnected("closed"));
    this.setState("offline");
    this.wake();
  }

  async connectLoop() {
    if (this.looping) return;
    this.looping = true;
    try {
      await this.connectUntilReady();
    } finally {
      this.looping = false;
    }
  }

  async connectUntilReady() {
    while (!this.stopped) {
      if (this.attempt > 0) {
        // 0.2 s doubling to 10 s, half of each delay random.
        const base = Math.min(10000, 200 * 2 ** Math.min(this.attempt - 1, 10));
        await sleep(base * (1 - 0.5 * Math.random()));
        if (this.stopped) return;
      }
      this.attempt++;
      this.setState(this.everConnected ? "reconnecting" : "connecting");
      try {
        const socket = await this.open();
        await this.restore((type, fields, onResult) => this.exchange(socket, type, fields, onResult));
        if (this.socket !== socket) continue;
        this.ready = true;
        this.attempt = 0;
        this.everConnected = true;
        this.setState("connected");
        this.wake();
        return;
      } catch (error) {
        if (error && error.sessionEnded) {
          this.stop();
          this.onSessionEnded?.();
          return;
        }
        if (this.socket) {
          const s = this.socket;
          this.socket = null;
          s.close();
        }
      }
    }
  }

  open() {
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(this.url, SUBPROTOCOL);
      } catch (error) {
        reject(error);
        return;
      }
      let opened = false;
      const timer = setTimeout(() => {
        if (!opened) socket.close();
      }, 10000);
      socket.onopen = () => {
        opened = true;
        clearTimeout(timer);
        if (socket.protocol !== SUBPROTOCOL) {
          socket.close();
          reject(new Disconnected("the relay did not accept parley.v1"));
          return;
        }
        this.socket = socket;
        resolve(socket);
      };
      socket.onmessage = (message) => this.receive(socket, message.data);
      socket.onclose = (event) => {
        clearTimeout(timer);
        if (!opened) {
          reject(new Disconnected(`connection failed (${event.code})`));
          return;
        }
        this.closed(socket, event.code);
      };
    });
  }

  closed(socket, code) {
    if (this.socket !== socket) return;
    this.socket = null;
    this.ready = false;
    this.failPending(new Disconnected(`connection closed (${code})`), socket);
    if (this.stopped) return;
    if (code === 4001) {
      // The session was ended elsewhere (logout): no reconnect.
      this.stopped = true;
      this.setState("offline");
      this.onSessionEnded?.();
      this.wake();
      return;
    }
    this.setState("reconnecting");
    this.wake();
    this.connectLoop().catch(() => {});
  }

  receive(socket, data) {
    if (typeof data !== "string") return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (!frame || typeof frame !== "object") return;
    if ("re" in frame) {
      const entry = typeof frame.re === "string" ? this.pending.get(frame.re) : null;
      if (!entry || entry.socket !== socket) return;
      this.pending.delete(frame.re);
      clearTimeout(entry.timer);
      if (frame.type === "error") {
        entry.reject(new RelayError(frame));
      } else if (frame.type !== entry.type) {
        entry.reject(new Error(`a ${frame.type} result to a ${entry.type} request`));
      } else {
        // Called before any later frame is handled (e.g. a subscribe reply before its replay).
        entry.onResult?.(frame);
        entry.resolve(frame);
      }
    } else if (typeof frame.type === "string" && frame.type.startsWith("event.")) {
      this.onEvent(frame);
    }
  }

  failPending(error, socket = null) {
    for (const [id, entry] of this.pending) {
      if (socket && entry.socket !== socket) continue;
      this.pending.delete(id);
      clearTimeout(entry.timer);
      entry.reject(error);
    }
  }

  /** One request on `socket`. */
  exchange(socket, type, fields = {}, onResult = null) {
    return new Promise((resolve, reject) => {
      if (!socket || socket.readyState !== WebSocket.OPEN) {
        reject(new Disconnected());
        return;
      }
      const id = `w${++this.counter}`;
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(new Timeout(type));
      }, this.requestTimeoutMs);
      this.pending.set(id, { type, resolve, reject, timer, socket, onResult });
      socket.send(JSON.stringify({ id, type, ...fields }));
    });
  }

  /**
   * A request once the connection is ready (waiting up to 30 s for a reconnect). Reads
   * that can be repeated are retried when the connection drops under them.
   */
  async request(type, fields = {}, { onResult = null, repeatable = REPEATABLE.has(type) } = {}) {
    let attempts = 0;
    for (;;) {
      const socket = await this.readySocket();
      try {
        return await this.exchange(socket, type, fields, onResult);
      } catch (error) {
        if (error instanceof Disconnected && repeatable && attempts < 3) {
          attempts++;
          continue;
        }
        throw error;
      }
    }
  }

  async readySocket(waitMs = 30000) {
    const deadline = Date.now() + waitMs;
    while (!(this.ready && this.socket)) {
      if (this.stopped) throw new Disconnected("offline");
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new Disconnected("no connection in time");
      await new Promise((resolve) => {
        const timer = setTimeout(resolve, remaining);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return this.socket;
  }

  wake() {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  /** Test and diagnostics hook: drop the socket as a network failure would. */
  drop() {
    if (this.socket) this.socket.close(4000, "dropped");
  }
}

const REPEATABLE = new Set(["user", "channels", "channel.members", "channel.membership", "key", "messages",
  "subscribe", "unsubscribe", "ping"]);

/**
 * One connection for the steps before there is a session (signup, login): open, run
 * `steps(send)`, close.
 */
export async function withFreshConnection(url, steps, timeoutMs = 15000) {
  const t = new Transport(url, { onEvent: () => {}, requestTimeoutMs: timeoutMs });
  t.stopped = false;
  const socket = await t.open();
  try {
    return await steps((type, fields) => t.exchange(socket, type, fields));
  } finally {
    t.stopped = true;
    t.socket = null;
    socket.close(1000);
  }
}
