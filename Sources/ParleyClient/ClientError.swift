import ParleyProtocol

/// Every failure of the client SDK. Descriptions never carry secrets (keys, passkeys,
/// session tokens, plaintext), so they are safe to log.
public enum ClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The relay answered with an error frame (the contract's `ErrorCode` is `code`).
    case relay(ErrorFrame)
    /// No reply within the request timeout.
    case timeout(RequestType)
    /// The connection dropped before the reply came; the request may or may not have
    /// been applied.
    case disconnected
    /// The relay could not be reached (or the connection not restored) in time.
    case connectFailed(String)
    /// `close()` was called.
    case closed
    /// The request needs a signed-in session: `signup`, `login` or `auth` first.
    case notAuthenticated
    /// The relay ended the session (`logout` elsewhere, close code 4001, or `auth` refused).
    case sessionEnded
    /// A reply that does not fit the request.
    case unexpectedReply(String)
    /// A request the client refuses to build (for example adding a current member).
    case invalidRequest(String)
    /// A known user's public key is not the one pinned: refused (and reported as a
    /// `SecurityAlert`). Fingerprints are base64 SHA-256 of the SPKI DER.
    case keyChanged(userID: ID, pinned: String, presented: String)
    /// Something signed did not verify: a membership chain, a key record, a member list.
    case verification(VerificationFailure)
    /// A local cryptographic failure (e.g. a challenge that does not decrypt to 32 bytes).
    case crypto(String)
    /// The identity or pin file cannot be read or written.
    case file(String)

    /// The contract's error code when the relay refused the request.
    public var code: ErrorCode? {
        if case .relay(let frame) = self { return frame.code }
        return nil
    }

    public var description: String {
        switch self {
        case .relay(let frame): return "relay error \(frame.code.rawValue): \(frame.message)"
        case .timeout(let type): return "no reply to \(type.rawValue) in time"
        case .disconnected: return "the connection dropped before the reply"
        case .connectFailed(let why): return "cannot connect: \(why)"
        case .closed: return "the client is closed"
        case .notAuthenticated: return "not signed in"
        case .sessionEnded: return "the session ended"
        case .unexpectedReply(let why): return "unexpected reply: \(why)"
        case .invalidRequest(let why): return "invalid request: \(why)"
        case .keyChanged(let user, let pinned, let presented):
            return "public key of \(user) changed: pinned \(pinned), presented \(presented); refused"
        case .verification(let failure): return failure.description
        case .crypto(let why): return "crypto failure: \(why)"
        case .file(let why): return "file error: \(why)"
        }
    }
}

/// What failed to verify, and why.
public struct VerificationFailure: Error, Equatable, Sendable, CustomStringConvertible {
    public enum Kind: String, Sendable, Equatable {
        /// A membership statement (or the chain around it).
        case membershipChain = "membership chain"
        /// A channel key record.
        case keyRecord = "key record"
        /// The relay's member list does not match the verified chain.
        case memberList = "member list"
        /// An event that does not match what it claims (e.g. `event.member` vs its statement).
        case event
    }

    public var kind: Kind
    public var channelID: ID?
    public var detail: String

    public init(_ kind: Kind, channelID: ID?, _ detail: String) {
        self.kind = kind
        self.channelID = channelID
        self.detail = detail
    }

    public var description: String {
        "\(kind.rawValue) of channel \(channelID?.string ?? "?") refused: \(detail)"
    }
}
