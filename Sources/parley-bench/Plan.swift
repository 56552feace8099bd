import Foundation

// What the scenarios hand the loops: plain values, made on the main thread after setup.

/// A channel a peer follows or sends to, by its index in the run and its id.
struct ChannelRef: Sendable {
    var index: Int
    var id: String
}

/// What one sender sends: to which channels (round robin), under which keys, how fast.
struct SendPlan: Sendable {
    struct Target: Sendable {
        var channel: ChannelRef
        var keyID: String
    }

    /// Unique in the run: it goes into every IV, so IVs never repeat under a key.
    var senderIndex: UInt32
    /// Empty for a raw-fanout publisher (it sends to its URL).
    var targets: [Target]
    /// Messages per second of this sender; 0 = closed loop.
    var rate: Double
    /// Closed loop: messages kept unacknowledged.
    var inflight: Int
    /// Where in the first interval this sender starts (0..<1), to spread senders out.
    var phase: Double
}

/// One client connection of the load.
struct PeerPlan: Sendable {
    var url: URL
    var sourceAddress: String?
    /// The session to `auth` with; nil for raw-fanout peers (no protocol, no auth).
    var session: String?
    /// Channels to subscribe to after `auth`.
    var subscriptions: [ChannelRef] = []
    var sends: SendPlan?
    /// raw-fanout: counts every text frame as a delivery of the raw publisher's stream.
    var rawSubscriber = false

    var isRaw: Bool { session == nil }
}

/// What every loop needs to know about the run.
struct RunSettings: Sendable {
    var runTag: UInt32
    var payload: BenchPayload
    var connectConcurrency: Int
    /// lws receive buffer per connection (small for many idle connections).
    var rxBufferSize: Int
    /// Run each context on libuv (epoll) rather than lws's poll() loop.
    var useLibuv: Bool
}
