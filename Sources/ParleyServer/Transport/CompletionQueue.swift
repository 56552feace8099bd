import CLibWebSockets
import Foundation
import ParleyProtocol

/// What a worker hands back to the service thread.
enum Completion: Sendable {
    /// A request's reply and effects.
    case outcome(connection: UInt64, Outcome)
    /// The database side of a `subscribe`.
    case subscriptionStarted(connection: UInt64, requestID: String, generation: UInt64,
                             Result<[SubscriptionStart], ErrorFrame>)
    /// One page of a subscription's replay.
    case replayPage(connection: UInt64, channel: ID, generation: UInt64, Result<[MessageRecord], ErrorFrame>)
    /// From the LISTEN thread: not a worker job (`outstandingJobs` does not count it).
    case cluster(ClusterEvent)
    /// A worker's read for a channel feed: a gap's messages (`after`, `through`], or a
    /// key record a catch-up found missing.
    case feedFilled(channel: ID, epoch: UInt64, after: Int, through: Int, Result<[MessageRecord], ErrorFrame>)
    case feedKey(channel: ID, epoch: UInt64, (KeyRecord, copies: [ID: [UInt8]], atSeq: Int)?)
    /// The membership changes a held message waits for (nil: the read failed).
    case feedMembers(channel: ID, epoch: UInt64, [(Event.Member, members: [ID], atSeq: Int?)]?)
}

/// Worker threads push completions here and wake the lws loop with `lws_cancel_service`;
/// the service thread drains it in `LWS_CALLBACK_EVENT_WAIT_CANCELLED`.
///
/// Thread-safe: `items` is guarded by `lock`. `context` is set once by the service thread
/// before any worker runs and cleared after they stopped.
final class CompletionQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Completion] = []       // guarded by lock
    nonisolated(unsafe) var context: OpaquePointer?

    func push(_ completion: Completion) {
        lock.withLock { items.append(completion) }
        if let context { lws_cancel_service(context) }
    }

    /// Several completions with one wake-up.
    func push(contentsOf batch: [Completion]) {
        lock.withLock { items.append(contentsOf: batch) }
        if let context { lws_cancel_service(context) }
    }

    /// Takes everything queued so far (service thread).
    func drain() -> [Completion] {
        lock.withLock {
            let drained = items
            items.removeAll(keepingCapacity: true)
            return drained
        }
    }
}
