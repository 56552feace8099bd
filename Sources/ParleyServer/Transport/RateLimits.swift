import Foundation
import ParleyProtocol

/// The contract's rate limits (§10 "Limits"), each configurable; `enabled = false` turns
/// them all off (test suites, benchmarks).
public struct RateLimits: Sendable {
    public var enabled = true
    /// Requests per second per connection, and the burst.
    public var connectionRate = 50.0
    public var connectionBurst = 200.0
    /// Messages per second per user, and the burst.
    public var messageRate = 20.0
    public var messageBurst = 100.0
    /// Signups per minute per address.
    public var signupsPerMinute = 30.0
    /// Login attempts per minute per username and per address.
    public var loginsPerMinute = 10.0

    public init() {}
}

/// A token bucket: `rate` tokens a second up to `burst`.
struct TokenBucket {
    let rate: Double
    let burst: Double
    private var tokens: Double
    private var updated: Double

    init(rate: Double, burst: Double, now: Double) {
        self.rate = rate
        self.burst = burst
        tokens = burst
        updated = now
    }

    /// Takes a token; nil when allowed, else the milliseconds until one is available.
    mutating func take(now: Double) -> Int? {
        tokens = min(burst, tokens + (now - updated) * rate)
        updated = now
        if tokens >= 1 - 1e-9 {   // refill arithmetic may land a hair below a whole token
            tokens -= 1
            return nil
        }
        return max(1, Int(((1 - tokens) / rate * 1000).rounded(.up)))
    }

    /// Whether the bucket is full again (and so can be forgotten).
    func isFull(now: Double) -> Bool {
        tokens + (now - updated) * rate >= burst
    }
}

/// The buckets keyed by user, address and username. Service thread only.
struct RateLimiter {
    let limits: RateLimits
    private var messages: [ID: TokenBucket] = [:]
    private var signups: [String: TokenBucket] = [:]
    private var logins: [String: TokenBucket] = [:]
    private var lastPrune = 0.0

    init(limits: RateLimits) {
        self.limits = limits
    }

    static func now() -> Double { ProcessInfo.processInfo.systemUptime }

    func connectionBucket() -> TokenBucket {
        TokenBucket(rate: limits.connectionRate, burst: limits.connectionBurst, now: Self.now())
    }

    /// The per-user, per-address and per-username limits of one request: nil when allowed,
    /// else the milliseconds to wait.
    mutating func check(_ request: Request, user: ID?, address: String) -> Int? {
        guard limits.enabled else { return nil }
        let now = Self.now()
        prune(now: now)
        switch request {
        case .message:
            guard let user else { return nil }
            return take(&messages, user, rate: limits.messageRate, burst: limits.messageBurst, now: now)
        case .signup:
            return take(&signups, address, rate: limits.signupsPerMinute / 60, burst: limits.signupsPerMinute, now: now)
        case .login(let login):
            // Both buckets are charged, so neither a name nor an address can be hammered.
            let byName = take(&logins, "user:" + login.username, rate: limits.loginsPerMinute / 60,
                              burst: limits.loginsPerMinute, now: now)
            let byAddress = take(&logins, "addr:" + address, rate: limits.loginsPerMinute / 60,
                                 burst: limits.loginsPerMinute, now: now)
            switch (byName, byAddress) {
            case (nil, nil): return nil
            case (let a, let b): return max(a ?? 0, b ?? 0)
            }
        default:
            return nil
        }
    }

    private func take<Key: Hashable>(_ buckets: inout [Key: TokenBucket], _ key: Key, rate: Double, burst: Double,
                                     now: Double) -> Int? {
        var bucket = buckets[key] ?? TokenBucket(rate: rate, burst: burst, now: now)
        let wait = bucket.take(now: now)
        buckets[key] = bucket
        return wait
    }

    /// Forgets full buckets once a minute, so the maps stay as small as the active set.
    private mutating func prune(now: Double) {
        guard now - lastPrune > 60 else { return }
        lastPrune = now
        messages = messages.filter { !$0.value.isFull(now: now) }
        signups = signups.filter { !$0.value.isFull(now: now) }
        logins = logins.filter { !$0.value.isFull(now: now) }
    }
}
