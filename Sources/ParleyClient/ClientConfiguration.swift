import Foundation

/// Settings of a `ParleyClient`; every field has a default.
public struct ClientConfiguration: Sendable {
    /// Seconds a request waits for its reply before failing with `.timeout`.
    public var requestTimeout: Double = 10
    /// Seconds a connection attempt may take.
    public var connectTimeout: Double = 10
    /// Seconds a request waits for a dropped connection to come back before failing.
    public var reconnectWaitTimeout: Double = 30
    /// Backoff between reconnection attempts.
    public var reconnect = ReconnectPolicy()
    /// How many times one `send` may try (rotations, conflicts, reconnects) before failing.
    public var sendAttempts = 8
    /// A send key is not used within this many milliseconds of its expiry (the relay's
    /// clock and ours differ a little); `key_expired` covers the rest.
    public var keyExpiryMarginMs = 250
    /// Where pinned public keys are kept. Nil: in memory only, for this client.
    public var pins: KeyPinStore?

    public init() {}
}

/// Exponential backoff with jitter, bounded.
public struct ReconnectPolicy: Sendable, Equatable {
    /// Reconnect at all after a drop.
    public var enabled = true
    /// Delay before the first attempt, seconds.
    public var initialDelay = 0.2
    /// Upper bound of any delay, seconds.
    public var maxDelay = 10.0
    /// Growth per failed attempt.
    public var multiplier = 2.0
    /// Fraction of each delay that is random (0 = none, 1 = anywhere in 0...delay), so
    /// many clients dropped together do not come back in lockstep.
    public var jitter = 0.5
    /// Give up after this many failed attempts (nil: never).
    public var maxAttempts: Int?

    public init() {}

    /// The delay before attempt `attempt` (0-based); `random` is uniform in 0...1.
    public func delay(attempt: Int, random: Double) -> Double {
        let exponent = Double(min(max(attempt, 0), 62))
        let base = min(maxDelay, initialDelay * pow(max(multiplier, 1), exponent))
        let spread = min(max(jitter, 0), 1)
        return max(0, base * (1 - spread * min(max(random, 0), 1)))
    }
}
