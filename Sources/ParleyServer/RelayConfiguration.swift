import Foundation
import ParleyProtocol

/// Every setting of the relay, with a default for each.
public struct RelayConfiguration: Sendable {
    /// Address and port to listen on (`PARLEY_LISTEN`).
    public var host = "127.0.0.1"
    public var port = 8080
    /// Key TTL in seconds (`PARLEY_KEY_TTL`).
    public var keyTTLSeconds = Limits.keyTTLSeconds
    /// Largest ciphertext a `message` may carry, decoded bytes.
    public var maxCiphertextBytes = Limits.maxCiphertextBytes
    /// Largest client→server WebSocket message, after reassembly.
    public var maxFrameBytes = Limits.maxFrameBytes
    /// Bound of each connection's queue of live frames, bytes; past it: close 4008.
    public var outgoingQueueBytes = Limits.outgoingQueueBytes
    /// Database worker threads (each with its own libpq connection).
    public var databaseWorkers = 4
    /// Seconds a challenge stays answerable.
    public var challengeTTLSeconds = Limits.challengeTTLSeconds
    /// Seconds a session lasts (not sliding).
    public var sessionTTLSeconds = Limits.sessionTTLSeconds
    /// ±window for client `ts`, seconds, inclusive.
    public var timestampWindowSeconds = Limits.timestampWindowSeconds
    /// How much the relay and libwebsockets log (`PARLEY_LOG_LEVEL`).
    public var logLevel = LogLevel.info
    /// `text` (logfmt) or `json`, one line per event (`PARLEY_LOG_FORMAT`).
    public var logFormat = Log.Format.text

    public enum LogLevel: String, Sendable, Comparable {
        case error, warn, info, debug

        private var rank: Int {
            switch self {
            case .error: return 0
            case .warn: return 1
            case .info: return 2
            case .debug: return 3
            }
        }

        public static func < (lhs: LogLevel, rhs: LogLevel) -> Bool { lhs.rank < rhs.rank }
    }

    /// Rate limits (`PARLEY_RATE_LIMITS=off` turns them all off).
    public var rateLimits = RateLimits()
    /// Open WebSocket connections at most; past it a handshake is refused with 503
    /// (`PARLEY_MAX_CONNECTIONS`).
    public var maxConnections = 10_000
    /// Open WebSocket connections per peer address at most; past it: 429
    /// (`PARLEY_MAX_CONNECTIONS_PER_ADDRESS`).
    public var maxConnectionsPerAddress = 256
    /// Seconds a connection has to authenticate before it is closed with 1008; 0 = no
    /// deadline (`PARLEY_AUTH_TIMEOUT`).
    public var authTimeoutSeconds = 10
    /// Origins a browser handshake may come from (e.g. `https://chat.example.com`); empty
    /// allows any. A handshake without `Origin` is always allowed (`PARLEY_ALLOWED_ORIGINS`).
    public var allowedOrigins: [String] = []
    /// The web client's folder, served at `/` (`PARLEY_WEB_ROOT`); nil serves no page.
    public var webRoot: URL?
    /// PEM certificate and key for `wss://`; plain `ws://` when nil.
    public var tlsCertificatePath: String?
    public var tlsKeyPath: String?

    public init() {}
}

/// What the relay knows about the connection a request came on, handed to the worker.
public struct RequestContext: Sendable {
    /// Unique for the life of the process; with `nodeID` it names the connection
    /// globally (challenges belong to the connection that asked for them).
    public var connectionID: UInt64
    /// Random per relay process.
    public var nodeID: ID
    /// The authenticated user, if any.
    public var userID: ID?
    /// SHA-256 of the connection's session token, when authenticated.
    public var sessionHash: [UInt8]?

    public init(connectionID: UInt64, nodeID: ID, userID: ID? = nil, sessionHash: [UInt8]? = nil) {
        self.connectionID = connectionID
        self.nodeID = nodeID
        self.userID = userID
        self.sessionHash = sessionHash
    }

    /// The owner tag stored with a challenge: which connection may answer it.
    public var connectionTag: String { "\(nodeID.string)/\(connectionID)" }
}

/// The result of one request, computed on a worker thread and applied by the service
/// thread: the frame to send back, and what else changes once it is committed.
public struct Outcome: Sendable {
    /// The encoded reply (a result or an error frame).
    public var reply: [UInt8]
    /// Effects to apply, in order, after the reply is queued.
    public var effects: [Effect]
    /// The code when the reply is an error frame (for metrics).
    public var errorCode: ErrorCode?

    public init(reply: [UInt8], effects: [Effect] = []) {
        self.reply = reply
        self.effects = effects
    }

    /// An error reply.
    public init(_ error: ErrorFrame) {
        self.reply = error.encode()
        self.effects = []
        self.errorCode = error.code
    }
}

/// A change that outlives the request, applied by the service thread.
public enum Effect: Sendable {
    /// This connection is now authenticated.
    case authenticated(userID: ID, username: String, sessionHash: [UInt8], sessionExpiresAt: Int)
    /// The session ended: this connection becomes unauthenticated (its subscriptions end),
    /// every other connection of the session is closed with 4001.
    case loggedOut(sessionHash: [UInt8])
    /// A committed message: fan out `event.message` to the channel's subscribers, once
    /// every membership change up to `membershipVersion` (in force at the commit) is out.
    case message(MessageRecord, membershipVersion: Int?)
    /// A committed key record: fan out `event.key`, each subscribed member with its own
    /// copy (`copies[user]`), the record's `encryptedKey` being ignored. `atSeq` is the
    /// channel's last_seq at the commit: the event goes out after that message.
    case key(KeyRecord, copies: [ID: [UInt8]], atSeq: Int)
    /// A committed membership change: `event.member` to the channel's subscribers and to
    /// every connection of the affected user (each connection once); `members` is the
    /// membership after the change. A removed user's subscriptions to the channel end.
    /// `atSeq` as for `key`.
    case member(Event.Member, members: [ID], atSeq: Int)
}
