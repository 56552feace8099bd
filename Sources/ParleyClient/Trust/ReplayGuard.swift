import ParleyProtocol

/// Remembers the `seq` each (`key_id`, `iv`) first came with (§7, §10 "Messages"): the
/// same pair under another `seq` is a replay and is dropped; under the same `seq` it is
/// history read again. Pure value type; bounded (oldest entries forgotten first).
public struct ReplayGuard: Sendable {
    public enum Verdict: Sendable, Equatable {
        /// First time this (`key_id`, `iv`) is seen: remembered now.
        case fresh
        /// Seen before with this same `seq`.
        case again
        /// Seen before with another `seq`: a replay.
        case replay(firstSeq: Int)
    }

    private struct Entry: Hashable {
        var keyID: ID
        var iv: [UInt8]
    }

    private var firstSeq: [Entry: Int] = [:]
    private var order: [Entry] = []
    private var head = 0
    /// Most pairs remembered.
    public let capacity: Int

    public init(capacity: Int = 200_000) {
        self.capacity = max(capacity, 1)
    }

    /// Checks the pair and remembers it when fresh.
    public mutating func admit(keyID: ID, iv: [UInt8], seq: Int) -> Verdict {
        let entry = Entry(keyID: keyID, iv: iv)
        if let first = firstSeq[entry] {
            return first == seq ? .again : .replay(firstSeq: first)
        }
        firstSeq[entry] = seq
        order.append(entry)
        if firstSeq.count > capacity {
            firstSeq.removeValue(forKey: order[head])
            head += 1
            if head > capacity {
                order.removeFirst(head)
                head = 0
            }
        }
        return .fresh
    }

    /// How many pairs are remembered.
    public var count: Int { firstSeq.count }
}
