import ParleyProtocol

/// What `ParleyClient.events` delivers: decoded, decrypted and verified.
public enum ClientEvent: Sendable, Equatable {
    /// A channel message, once per `seq`, in `seq` order per channel.
    case message(DecryptedMessage)
    /// A new channel key, checked (signature by the creator's pinned key, creator a
    /// member of that membership version, key matching its digest) and cached.
    case keyRotated(channelID: ID, keyID: ID, by: ID)
    /// A membership change whose statement verified as the next link of the chain.
    case membership(channelID: ID, userID: ID, action: Event.Member.Action, by: ID)
    /// The connection's state.
    case connection(ConnectionState)
    /// Something refused for security reasons: a changed key, a forged statement or key
    /// record, a replayed message. Loud on purpose: show it to the user.
    case securityAlert(SecurityAlert)
}

/// The state of the client's connection to the relay.
public enum ConnectionState: Sendable, Equatable {
    /// Opening a connection (first time or after a drop).
    case connecting
    /// Usable: open, and after a reconnect also authenticated and resubscribed.
    case connected
    /// The connection dropped or was closed; reconnecting follows unless closed for good.
    case disconnected
}

/// A refusal worth telling the user about.
public enum SecurityAlert: Sendable, Equatable {
    /// The relay presented another public key for a user whose key is pinned.
    case keyChanged(userID: ID, pinned: String, presented: String)
    /// A statement, key record, member list or event did not verify.
    case verificationFailed(VerificationFailure)
    /// A message whose (`key_id`, `iv`) came before with another `seq`: dropped.
    case replayDropped(channelID: ID, seq: Int, firstSeq: Int)
    /// The relay's channel ends at `lastSeq`, below the seq `seen` this client already
    /// received: a restore from an older backup, or a relay withholding messages. The
    /// client goes on from `lastSeq`; what it saw above stays seen (replays still drop).
    case historyRewound(channelID: ID, lastSeq: Int, seen: Int)
}

/// A message after decryption and verification.
public struct DecryptedMessage: Sendable, Equatable {
    /// The message's text, or why it cannot be shown as the sender's.
    public enum Content: Sendable, Equatable {
        /// Decrypted, and the sender's signature verified with its pinned key.
        case text(String)
        /// Failed some step (key, decryption, format, signature): never shown as the
        /// sender's text.
        case unverifiable(reason: String)
    }

    public var channelID: ID
    public var seq: Int
    public var senderID: ID
    public var keyID: ID
    /// The sender's signed time, unix seconds.
    public var ts: Int
    /// When the relay stored it, unix milliseconds.
    public var receivedAt: Int
    public var content: Content

    public init(channelID: ID, seq: Int, senderID: ID, keyID: ID, ts: Int, receivedAt: Int, content: Content) {
        self.channelID = channelID
        self.seq = seq
        self.senderID = senderID
        self.keyID = keyID
        self.ts = ts
        self.receivedAt = receivedAt
        self.content = content
    }

    /// The verified text, nil when unverifiable.
    public var text: String? {
        if case .text(let text) = content { return text }
        return nil
    }
}

/// The result of `send(text:to:)`.
public struct SentMessage: Sendable, Equatable {
    public var channelID: ID
    public var seq: Int
    /// Unix milliseconds.
    public var receivedAt: Int
    /// The id that made the send idempotent across retries.
    public var clientMsgID: ID
    public var keyID: ID
}

/// A page of `history(of:after:before:limit:)`.
public struct HistoryPage: Sendable, Equatable {
    /// Ascending by `seq`; replays (a repeated `key_id`/`iv` under another `seq`) left out.
    public var messages: [DecryptedMessage]
    /// More messages lie beyond the page in the direction of travel.
    public var hasMore: Bool
}

/// A user as the relay describes it, its key checked against the pins.
public struct UserInfo: Sendable, Equatable {
    public var userID: ID
    public var username: String
    /// DER SPKI.
    public var publicKey: [UInt8]
    /// base64 SHA-256 of the SPKI: what to compare out of band.
    public var fingerprint: String
    /// Unix milliseconds.
    public var createdAt: Int
}

/// A member of a channel: the ids come from the verified membership chain, the names
/// and keys from the relay (keys checked against the pins).
public struct ChannelMember: Sendable, Equatable {
    public var userID: ID
    public var username: String
    public var role: Role
    public var fingerprint: String
}
