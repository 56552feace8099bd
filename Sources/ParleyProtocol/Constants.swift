/// Fixed names of the protocol (wire-protocol.md §1).
public enum ProtocolConstants {
    /// The WebSocket path.
    public static let path = "/ws"
    /// The WebSocket subprotocol clients must offer.
    public static let subprotocol = "parley.v1"
    /// Prefix of the challenge answer hash input (20 ASCII bytes).
    public static let challengePrefix = "parley.challenge.v1:"
    /// Prefix of a membership statement's signed text.
    public static let membershipPrefix = "parley.membership.v1:"
    /// Prefix of a key record's signed text.
    public static let keyPrefix = "parley.key.v1:"
    /// The RSA-OAEP label: the 6 UTF-8 bytes `parley`.
    public static let oaepLabel: [UInt8] = Array("parley".utf8)
    /// RSA-PSS salt length in bytes.
    public static let pssSaltLength = 222
}

/// WebSocket close codes the relay uses.
public enum CloseCode {
    /// A client message larger than the frame bound.
    public static let messageTooBig: UInt16 = 1009
    /// The session was ended by `logout` on another connection.
    public static let sessionEnded: UInt16 = 4001
    /// The outgoing queue passed its bound; the reason text is `slow consumer`.
    public static let slowConsumer: UInt16 = 4008
    /// Reason text sent with `slowConsumer`.
    public static let slowConsumerReason = "slow consumer"
}

/// Numeric limits and defaults of the contract. Those marked "default" are server
/// settings that may be configured; the others are fixed by the wire format.
public enum Limits {
    /// Default bound on one client→server message after reassembly, in bytes.
    public static let maxFrameBytes = 262_144
    /// Default maximum decoded ciphertext, in bytes.
    public static let maxCiphertextBytes = 65_536
    /// Minimum decoded ciphertext (the 16-byte GCM tag).
    public static let minCiphertextBytes = 16
    /// AES-GCM IV length.
    public static let ivBytes = 12
    /// SHA-256 digest length (key digest, `prev`, challenge answer).
    public static let digestBytes = 32
    /// Length of a challenge secret, channel key, passkey and session secret.
    public static let secretBytes = 32
    /// History page size when `limit` is not given.
    public static let historyDefaultLimit = 50
    /// Largest allowed `limit`.
    public static let historyMaxLimit = 200
    /// A `messages` page stops early rather than exceed this many bytes.
    public static let pageByteCap = 1_048_576
    /// More missed messages than this are not replayed on subscribe.
    public static let replayMax = 1000
    /// Inclusive ± window for client `ts`, in seconds.
    public static let timestampWindowSeconds = 300
    /// Lifetime of a challenge, in seconds.
    public static let challengeTTLSeconds = 300
    /// Default channel key lifetime, in seconds.
    public static let keyTTLSeconds = 3600
    /// Session lifetime (not sliding), in seconds.
    public static let sessionTTLSeconds = 30 * 24 * 3600
    /// Most members a channel may have.
    public static let maxMembers = 1000
    /// Request ids are 1...64 Unicode scalar values.
    public static let requestIDLength: ClosedRange<Int> = 1...64
    /// Channel names are 1...64 Unicode scalar values.
    public static let channelNameLength: ClosedRange<Int> = 1...64
    /// Usernames are 3...32 characters of `[a-z0-9_.-]`.
    public static let usernameLength: ClosedRange<Int> = 3...32
    /// Largest integer on the wire, 2^53 − 1.
    public static let maxInteger = JSONField.maxInteger
    /// Default slow-consumer bound on queued live bytes per connection.
    public static let outgoingQueueBytes = 4 * 1_048_576
    /// The relay pings this often, in seconds.
    public static let pingIntervalSeconds = 30
    /// A peer silent this long is dropped, in seconds.
    public static let idleTimeoutSeconds = 60

    /// Whether `username` is 3...32 characters of `[a-z0-9_.-]`.
    public static func isValidUsername(_ username: String) -> Bool {
        var count = 0
        for byte in username.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
                count += 1
            default:
                return false
            }
        }
        return usernameLength.contains(count)
    }
}
