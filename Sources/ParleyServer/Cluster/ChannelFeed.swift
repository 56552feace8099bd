import ParleyProtocol

/// One channel's committed events, put in commit order for this node's subscribers.
///
/// With several nodes, a channel's commits reach a node by two roads: its own commits
/// straight from its database workers, the other nodes' through the LISTEN connection
/// (`ClusterListener`). The two interleave in any order, so every message, key record and
/// membership change of a channel with local subscribers passes through its feed, which
/// releases messages strictly by seq — `head + 1` next, never past a gap — and key records
/// and membership changes right after the message they committed behind (`atSeq`). A
/// gap that no road fills soon is read from the tables (`missing`); the relay does that.
///
/// Service thread only; a value type so the ordering is tested without sockets.
struct ChannelFeed {
    /// A committed event of the channel.
    enum Item {
        /// `remote`: committed by another node (read from the tables here).
        case message(MessageRecord, remote: Bool)
        case key(KeyRecord, copies: [ID: [UInt8]])
        case member(Event.Member, members: [ID])
    }

    /// The highest seq released; nil until the first subscription tells where the
    /// channel stood (`start`). Until then everything is kept.
    private(set) var head: Int?
    /// The highest seq known to be committed: a gap while above `head`.
    private(set) var known = 0
    /// Messages above `head` not yet released, by seq.
    private var messages: [Int: (record: MessageRecord, remote: Bool, membershipVersion: Int?)] = [:]
    /// Key records and membership changes not yet released, in arrival order.
    private var extras: [(atSeq: Int, item: Item)] = []
    /// The newest key record and membership version released or read at a start, so a
    /// catch-up after a LISTEN outage can tell what this node missed.
    private(set) var keyID: ID?
    private(set) var membershipVersion = 0
    /// Keys released here and the keys they replaced: a record among them that arrives
    /// late is older than the newest and must not become `keyID` again.
    private var supersededKeys: Set<ID> = []

    /// Tells this feed apart from an earlier one of the same channel (a read's answer
    /// for that one must not clear `fetchInFlight` here).
    let epoch: UInt64
    /// A read of the tables for the gap is under way.
    var fetchInFlight = false
    /// Since when `head` has been stuck below `known` (seconds), nil without a gap. A
    /// feed that keeps moving has no stale gap, however busy the channel.
    private(set) var gapSince: Double?
    private var gapHead = 0
    /// The gap is known to have no other road (found by a catch-up): read it at once.
    var urgent = false

    init(epoch: UInt64) {
        self.epoch = epoch
    }

    /// What the next message waits for, when it cannot go out yet: the membership changes
    /// before it (it committed under a version this feed has not released — say, another
    /// node's removal not yet announced here), or the key record it is sealed with (every
    /// message uses the newest key at its commit, so that record committed before it).
    enum Wait: Equatable {
        case membership(ClosedRange<Int>)
        case key(ID)
    }

    private(set) var waitingFor: Wait?
    private(set) var waitingSince: Double?
    /// A read of what the message waits for is under way.
    var waitReadInFlight = false

    /// The membership versions the next message waits for.
    var fence: ClosedRange<Int>? {
        if case .membership(let versions) = waitingFor { return versions }
        return nil
    }

    /// A message committed here or elsewhere; `membershipVersion` is the channel's at the
    /// commit when known (this node's commits). Returns false when it was already released.
    @discardableResult
    mutating func add(_ record: MessageRecord, remote: Bool = false, membershipVersion: Int? = nil,
                      now: Double) -> Bool {
        if let head, record.seq <= head { return false }
        if messages[record.seq]?.remote == false { return false }
        messages[record.seq] = (record, remote, membershipVersion)
        learn(record.seq, now: now)
        return true
    }

    /// A key record or membership change that committed behind message `atSeq`.
    mutating func add(_ item: Item, atSeq: Int, now: Double) {
        if case .key(let record, _) = item {
            // A catch-up may read a key record that is already here or already out; one
            // that committed before messages already out, or that a released key replaced,
            // arrives late and is older than the newest.
            let pending = extras.contains {
                if case .key(let other, _) = $0.item { return other.keyID == record.keyID }
                return false
            }
            if pending || record.keyID == keyID || supersededKeys.contains(record.keyID) { return }
            if let head, atSeq < head { return }
        }
        extras.append((atSeq, item))
        learn(atSeq, now: now)
    }

    /// The channel has at least `seq` messages (an announcement, a catch-up, a subscription's start).
    mutating func learn(_ seq: Int, now: Double) {
        known = max(known, seq)
        noteGap(now: now)
    }

    /// Where the channel stood when a subscription started: the first start fixes `head`
    /// (everything at or below it is covered by the subscription's own snapshot and
    /// replay); later ones only teach `known`.
    mutating func start(lastSeq: Int, keyID: ID?, membershipVersion: Int, now: Double) {
        if head == nil {
            head = lastSeq
            messages = messages.filter { $0.key > lastSeq }
            self.keyID = keyID
            self.membershipVersion = membershipVersion
            // Keys committed before messages the start covers are older than its key.
            extras.removeAll {
                if case .key = $0.item { return $0.atSeq < lastSeq }
                return false
            }
        }
        learn(lastSeq, now: now)
    }

    /// Takes what may go out now, in order: extras whose message is out, then the next
    /// message, and so on while there is no gap.
    mutating func release(now: Double) -> [Item] {
        guard var next = head else { return [] }
        var out: [Item] = []
        var wait: Wait?
        while true {
            if extras.contains(where: { $0.atSeq <= next }) {
                // Stable: the same atSeq keeps arrival order.
                let due = extras.enumerated().filter { $0.element.atSeq <= next }
                    .sorted { ($0.element.atSeq, $0.offset) < ($1.element.atSeq, $1.offset) }
                extras.removeAll { $0.atSeq <= next }
                for entry in due {
                    switch entry.element.item {
                    case .key(let record, _):
                        if supersededKeys.contains(record.keyID) { continue }
                        keyID = record.keyID
                        supersededKeys.insert(record.keyID)
                        if let previous = record.previousKeyID { supersededKeys.insert(previous) }
                    case .member(let event, _): membershipVersion = max(membershipVersion, event.membership.version)
                    case .message: break
                    }
                    out.append(entry.element.item)
                }
            }
            guard let entry = messages[next + 1] else { break }
            if let version = entry.membershipVersion, version > membershipVersion {
                wait = .membership((membershipVersion + 1)...version)
                break
            }
            if entry.record.keyID != keyID {
                wait = .key(entry.record.keyID)
                break
            }
            messages.removeValue(forKey: next + 1)
            next += 1
            out.append(.message(entry.record, remote: entry.remote))
        }
        head = next
        if wait != waitingFor || waitingSince == nil { waitingSince = wait == nil ? nil : now }
        waitingFor = wait
        noteGap(now: now)
        return out
    }

    /// What the next message waits for does not exist (a read found nothing): let it go.
    mutating func passFence() {
        switch waitingFor {
        case .membership(let versions): membershipVersion = max(membershipVersion, versions.upperBound)
        case .key(let id): keyID = id
        case nil: break
        }
    }

    /// Whether to read what the next message waits for: after `grace` seconds without its
    /// announcement, one read at a time.
    func shouldReadFence(now: Double, grace: Double) -> Bool {
        guard waitingFor != nil, !waitReadInFlight, let since = waitingSince else { return false }
        return now - since >= grace
    }

    /// The seqs to read from the tables: everything above `head` up to the highest known.
    /// Nil while the next message is here (perhaps held by the fence).
    var missing: ClosedRange<Int>? {
        guard let head, known > head, messages[head + 1] == nil else { return nil }
        return (head + 1)...known
    }

    /// Whether a read of the gap should start now: not while one runs; at once when
    /// urgent (or when the LISTEN connection is down and nothing else will fill it);
    /// otherwise only after `grace` seconds — an announcement on its way fills most gaps.
    func shouldFetch(now: Double, grace: Double, listening: Bool) -> Bool {
        guard missing != nil, !fetchInFlight, let since = gapSince else { return false }
        return urgent || !listening || now - since >= grace
    }

    /// Rows of `(after, through]` read from the tables, ascending. Rows missing at the
    /// start of that range no longer exist (deleted by retention; a read always returns
    /// its first row): the feed moves past them instead of waiting forever.
    mutating func filled(_ records: [MessageRecord], after: Int, through: Int, now: Double) {
        fetchInFlight = false
        // A page came: the next one is read at once if the gap is still there.
        urgent = !records.isEmpty
        let absentThrough = records.first.map { $0.seq - 1 } ?? through
        if let current = head, absentThrough > current, absentThrough > after {
            head = absentThrough
            messages = messages.filter { $0.key > absentThrough }
        }
        for record in records { add(record, remote: true, now: now) }
    }

    private mutating func noteGap(now: Double) {
        if let head, missing != nil {
            if gapSince == nil || gapHead != head {
                gapSince = now
                gapHead = head
            }
        } else {
            gapSince = nil
            urgent = false
        }
    }
}
