import ParleyProtocol

/// One WebSocket connection. Lives on the service thread; nothing else touches it.
final class Connection {
    let id: UInt64
    /// The lws handle; valid until `LWS_CALLBACK_CLOSED`.
    let wsi: OpaquePointer
    let peerAddress: String
    /// Unix ms when the handshake completed.
    let openedAt = Relay.nowMillis()

    var userID: ID?
    var username: String?
    var sessionHash: [UInt8]?
    /// Unix ms when the session ends; the connection is closed with 4001 then.
    var sessionExpiresAt: Int?
    /// Unix ms by which an unauthenticated connection must authenticate (nil: no deadline).
    var authDeadline: Int?

    /// A client→server message being reassembled from fragments.
    var inbound: [UInt8] = []

    /// Frames waiting for the socket, oldest first (`head` is the next to write).
    private var queue: [QueuedFrame] = []
    private var head = 0
    /// Bytes of queued live frames (the slow-consumer bound counts only these).
    private(set) var queuedLiveBytes = 0
    /// Bytes of everything queued.
    private(set) var queuedBytes = 0

    /// Followed channels.
    var subscriptions: [ID: Subscription] = [:]

    /// Requests per second of this connection (§10 limits).
    var requestBucket: TokenBucket

    /// Set when the connection must be closed at its next writable callback.
    var pendingClose: (code: UInt16, reason: String)?

    struct QueuedFrame {
        let buffer: FrameBuffer
        let live: Bool
    }

    init(id: UInt64, wsi: OpaquePointer, peerAddress: String, requestBucket: TokenBucket) {
        self.id = id
        self.wsi = wsi
        self.peerAddress = peerAddress
        self.requestBucket = requestBucket
    }

    var isAuthenticated: Bool { userID != nil }

    /// Live bytes waiting for this connection: queued, and held by replaying subscriptions.
    var pendingLiveBytes: Int {
        subscriptions.values.reduce(queuedLiveBytes) { $0 + $1.heldBytes }
    }
    var hasQueuedFrames: Bool { head < queue.count }

    func enqueue(_ buffer: FrameBuffer, live: Bool) {
        queue.append(QueuedFrame(buffer: buffer, live: live))
        queuedBytes += buffer.count
        if live { queuedLiveBytes += buffer.count }
    }

    func dequeue() -> FrameBuffer? {
        guard head < queue.count else { return nil }
        let frame = queue[head]
        head += 1
        queuedBytes -= frame.buffer.count
        if frame.live { queuedLiveBytes -= frame.buffer.count }
        if head > 64 && head * 2 > queue.count {
            queue.removeFirst(head)
            head = 0
        }
        return frame.buffer
    }

    /// The next frames, oldest first, as many as fit in `budget` bytes (at least one).
    func dequeue(upTo budget: Int) -> [FrameBuffer] {
        var frames: [FrameBuffer] = []
        var bytes = 0
        while head < queue.count, frames.isEmpty || bytes + queue[head].buffer.count <= budget, let frame = dequeue() {
            frames.append(frame)
            bytes += frame.count
        }
        return frames
    }

    /// Drops everything queued (a connection about to be closed).
    func dropQueue() {
        queue.removeAll()
        head = 0
        queuedBytes = 0
        queuedLiveBytes = 0
    }
}

/// One connection's subscription to one channel: the replay-then-live hand-over as a
/// small state machine (service thread only).
///
/// The subscription is registered before the backlog is read, so a message committed
/// after that moment reaches it live, and one committed before is in the backlog. Live
/// messages that arrive while the reply or the replay is pending wait in `held`, and
/// only seqs above `lastDelivered` are ever sent: nothing twice, nothing skipped.
struct Subscription {
    enum Phase {
        /// Registered; waiting for the database side of `subscribe`.
        case starting
        /// Sending stored messages in pages: the next page starts after `lastDelivered`,
        /// ends at `through`; then `event.synced` with `through`.
        case replaying(through: Int, pageInFlight: Bool)
        /// Streaming live messages.
        case live
    }

    var phase: Phase = .starting
    /// Distinguishes this subscription from an earlier one on the same channel, so a
    /// late database answer for a replaced subscription is ignored.
    let generation: UInt64
    /// The highest seq sent (or covered) so far.
    var lastDelivered = 0
    /// Live messages that arrived before the hand-over completed, in seq order.
    var held: [(seq: Int, frame: FrameBuffer)] = []
    /// Bytes of `held`: they count toward the connection's slow-consumer bound, or a
    /// subscriber replaying slower than its channel grows would hold every new message.
    private(set) var heldBytes = 0

    init(generation: UInt64) {
        self.generation = generation
    }

    /// A live message: send it now, hold it, or drop it (already covered).
    mutating func accept(seq: Int, frame: FrameBuffer) -> FrameBuffer? {
        switch phase {
        case .live:
            guard seq > lastDelivered else { return nil }
            lastDelivered = seq
            return frame
        case .starting, .replaying:
            held.append((seq, frame))
            heldBytes += frame.count
            return nil
        }
    }

    /// Forgets what is held (the connection is closing).
    mutating func dropHeld() {
        held.removeAll()
        heldBytes = 0
    }

    /// Goes live after the replay (or without one): returns the held messages above what
    /// was delivered, in order.
    mutating func goLive() -> [FrameBuffer] {
        phase = .live
        var released: [FrameBuffer] = []
        for (seq, frame) in held where seq > lastDelivered {
            lastDelivered = seq
            released.append(frame)
        }
        held.removeAll()
        heldBytes = 0
        return released
    }
}
