import Foundation
import ParleyProtocol
@testable import ParleyServer
import XCTest

/// `ChannelFeed` alone, without sockets or a database: one channel's commits from two
/// roads (this node's own and other nodes' announcements) put in commit order.
final class ChannelFeedTests: XCTestCase {
    private let channel = ID.random()
    private let sender = ID.random()
    private let messageKey = ID.random()

    // MARK: - Helpers

    /// Message `seq`, sealed with `key` (the channel's newest key at its commit: by
    /// default the key every feed here starts with).
    private func message(_ seq: Int, key: ID? = nil, ciphertext: [UInt8]? = nil) -> MessageRecord {
        MessageRecord(channelID: channel, seq: seq, senderID: sender, keyID: key ?? messageKey,
                      iv: Array(repeating: UInt8(truncatingIfNeeded: seq), count: 12),
                      ciphertext: ciphertext ?? Array(repeating: UInt8(truncatingIfNeeded: seq), count: 32),
                      ts: 1_700_000_000 + seq, receivedAt: 1_700_000_000_000 + seq)
    }

    private func keyRecord(_ keyID: ID, previous: ID? = nil) -> KeyRecord {
        KeyRecord(keyID: keyID, channelID: channel, creatorID: sender, previousKeyID: previous, membershipVersion: 1,
                  digest: Array(repeating: 7, count: 32), sig: Array(repeating: 9, count: 256),
                  createdAt: 1_700_000_000_000, expiresAt: 1_700_086_400_000, encryptedKey: nil)
    }

    private func keyItem(_ keyID: ID, previous: ID? = nil) -> ChannelFeed.Item {
        .key(keyRecord(keyID, previous: previous), copies: [sender: [1, 2, 3]])
    }

    private func memberEvent(version: Int, user: ID = ID.random(), action: Event.Member.Action = .added) -> Event.Member {
        let statement = MembershipStatement(version: version, prev: version == 1 ? [] : Array(repeating: 1, count: 32),
                                            ts: 1_700_000_000, ownerID: sender, members: [sender, user],
                                            signerID: sender, sig: Array(repeating: 5, count: 256))
        return Event.Member(channelID: channel, userID: user, action: action, by: sender, membership: statement)
    }

    private func memberItem(version: Int, user: ID = ID.random()) -> ChannelFeed.Item {
        let event = memberEvent(version: version, user: user)
        return .member(event, members: event.membership.members)
    }

    /// Labels keys by a name the test chose, so expectations read as a sequence.
    private final class Labels {
        var keys: [ID: String] = [:]
        func key(_ name: String) -> ID {
            let id = ID.random()
            keys[id] = name
            return id
        }
    }

    /// "m<seq>" for a local message, "r<seq>" for a remote one, "k:<name>" for a key,
    /// "v<version>" for a membership change.
    private func describe(_ items: [ChannelFeed.Item], labels: Labels? = nil) -> [String] {
        items.map { item in
            switch item {
            case .message(let record, let remote): return (remote ? "r" : "m") + "\(record.seq)"
            case .key(let record, _): return "k:" + (labels?.keys[record.keyID] ?? record.keyID.string)
            case .member(let event, _): return "v\(event.membership.version)"
            }
        }
    }

    private func seqs(_ items: [ChannelFeed.Item]) -> [Int] {
        items.compactMap { item in
            if case .message(let record, _) = item { return record.seq }
            return nil
        }
    }

    private func startedFeed(at lastSeq: Int = 0, now: Double = 100) -> ChannelFeed {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: lastSeq, keyID: messageKey, membershipVersion: 1, now: now)
        return feed
    }

    // MARK: - Order of messages

    func testNothingIsReleasedBeforeStart() {
        var feed = ChannelFeed(epoch: 7)
        XCTAssertEqual(feed.epoch, 7)
        XCTAssertNil(feed.head)
        XCTAssertTrue(feed.add(message(1), now: 1))
        XCTAssertTrue(feed.add(message(3), remote: true, now: 1))
        feed.add(keyItem(ID.random()), atSeq: 1, now: 1)
        feed.add(memberItem(version: 2), atSeq: 0, now: 1)
        XCTAssertTrue(describe(feed.release(now: 2)).isEmpty, "no start yet: nothing may go out")
        XCTAssertNil(feed.head)
        XCTAssertEqual(feed.known, 3, "what arrived is still learned")
        XCTAssertNil(feed.missing, "no gap without a head")
        XCTAssertNil(feed.gapSince)
        XCTAssertFalse(feed.shouldFetch(now: 100, grace: 0.3, listening: false))
        XCTAssertFalse(feed.shouldFetch(now: 100, grace: 0.3, listening: true))
    }

    func testMessagesAreReleasedStrictlyBySeqWhateverTheArrivalOrder() {
        var feed = startedFeed()
        XCTAssertEqual(feed.head, 0)
        var released: [[Int]] = []
        for seq in [3, 1, 5, 2, 4] {
            XCTAssertTrue(feed.add(message(seq), remote: seq.isMultiple(of: 2), now: 101))
            released.append(seqs(feed.release(now: 101)))
        }
        XCTAssertEqual(released, [[], [1], [], [2, 3], [4, 5]])
        XCTAssertEqual(feed.head, 5)
        XCTAssertEqual(feed.known, 5)
        XCTAssertNil(feed.missing)

        // Many random orders, both roads mixed: always 1...n, each once, never past a gap.
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            var feed = startedFeed(at: 10)
            let order = Array(11...40).shuffled(using: &generator)
            var out: [Int] = []
            for seq in order {
                feed.add(message(seq), remote: Bool.random(using: &generator), now: 101)
                let batch = seqs(feed.release(now: 101))
                if let first = batch.first { XCTAssertEqual(first, (out.last ?? 10) + 1, "released past a gap: \(order)") }
                out += batch
            }
            XCTAssertEqual(out, Array(11...40), "order \(order)")
            XCTAssertEqual(feed.head, 40)
        }
    }

    func testStartDropsWhatTheStartCovers() {
        var feed = ChannelFeed(epoch: 1)
        for seq in [2, 6, 4, 5, 3] { feed.add(message(seq), remote: true, now: 10) }
        feed.start(lastSeq: 4, keyID: messageKey, membershipVersion: 1, now: 11)
        XCTAssertEqual(feed.head, 4)
        XCTAssertEqual(describe(feed.release(now: 11)), ["r5", "r6"], "seqs up to 4 come from the subscription's replay")
        XCTAssertEqual(feed.head, 6)
        // A late copy of a covered message is not released either.
        XCTAssertFalse(feed.add(message(3), now: 12))
        XCTAssertFalse(feed.add(message(4), remote: true, now: 12))
        XCTAssertTrue(feed.release(now: 12).isEmpty)
    }

    func testAStartBelowWhatArrivedKeepsTheGapOpen() {
        var feed = ChannelFeed(epoch: 1)
        feed.add(message(8), now: 10)
        feed.start(lastSeq: 5, keyID: messageKey, membershipVersion: 1, now: 11)
        XCTAssertTrue(feed.release(now: 11).isEmpty, "6 and 7 are missing")
        XCTAssertEqual(feed.missing, 6...8)
        XCTAssertEqual(feed.gapSince, 11)
    }

    func testLaterStartsOnlyRaiseKnown() {
        let first = ID.random(), second = ID.random()
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 5, keyID: first, membershipVersion: 3, now: 10)
        XCTAssertEqual(feed.head, 5)
        XCTAssertEqual(feed.keyID, first)
        XCTAssertEqual(feed.membershipVersion, 3)

        // A second subscription that read an older snapshot changes nothing.
        feed.start(lastSeq: 2, keyID: second, membershipVersion: 9, now: 11)
        XCTAssertEqual(feed.head, 5)
        XCTAssertEqual(feed.known, 5)
        XCTAssertEqual(feed.keyID, first)
        XCTAssertEqual(feed.membershipVersion, 3)
        XCTAssertNil(feed.missing)

        // A newer one teaches that seqs 6...8 exist, but does not move the head past them.
        feed.start(lastSeq: 8, keyID: second, membershipVersion: 9, now: 12)
        XCTAssertEqual(feed.head, 5)
        XCTAssertEqual(feed.known, 8)
        XCTAssertEqual(feed.missing, 6...8)
        XCTAssertEqual(feed.gapSince, 12)
        XCTAssertEqual(feed.keyID, first)
        XCTAssertEqual(feed.membershipVersion, 3)
        XCTAssertTrue(feed.release(now: 12).isEmpty)
        for seq in 6...8 { feed.add(message(seq, key: first), now: 13) }
        XCTAssertEqual(seqs(feed.release(now: 13)), [6, 7, 8])
    }

    // MARK: - Keys and membership changes

    func testExtrasGoRightAfterTheirMessageInAtSeqThenArrivalOrder() {
        let labels = Labels()
        var feed = startedFeed()
        let k2a = labels.key("2a"), k2b = labels.key("2b"), k1 = labels.key("1"), k0 = labels.key("0")
        // Arrival order deliberately unlike commit order.
        feed.add(keyItem(k2a), atSeq: 2, now: 101)
        feed.add(keyItem(k1), atSeq: 1, now: 101)
        feed.add(memberItem(version: 2), atSeq: 2, now: 101)
        feed.add(keyItem(k2b), atSeq: 2, now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels), [], "message 1 first")
        feed.add(keyItem(k0), atSeq: 0, now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels), ["k:0"], "at_seq 0: behind nothing")
        // Each sealed with the newest key at its commit.
        feed.add(message(3, key: k2b), now: 101)
        feed.add(message(2, key: k1), remote: true, now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels), [], "still waiting for message 1")
        feed.add(message(1, key: k0), now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels),
                       ["m1", "k:1", "r2", "k:2a", "v2", "k:2b", "m3"])
        XCTAssertEqual(feed.head, 3)
    }

    func testAnExtraAboveTheHeadWaitsForItsMessageAndTeachesTheGap() {
        let labels = Labels()
        var feed = startedFeed(at: 3)
        let key = labels.key("k")
        feed.add(keyItem(key), atSeq: 5, now: 101)
        XCTAssertEqual(feed.known, 5)
        XCTAssertEqual(feed.missing, 4...5)
        XCTAssertEqual(feed.gapSince, 101)
        feed.add(message(4), now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels), ["m4"], "the key committed after 5, not 4")
        feed.add(message(6, key: key), now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels), [])
        feed.add(message(5), remote: true, now: 101)
        XCTAssertEqual(describe(feed.release(now: 101), labels: labels), ["r5", "k:k", "m6"])
    }

    func testAChangeBehindReleasedMessagesGoesOutAtOnce() {
        var feed = startedFeed()
        for seq in 1...4 { feed.add(message(seq), remote: true, now: 101) }
        XCTAssertEqual(seqs(feed.release(now: 101)), [1, 2, 3, 4])
        // Remote messages carry no membership version: a change announced late still goes out.
        feed.add(memberItem(version: 2), atSeq: 2, now: 102)
        XCTAssertEqual(feed.known, 4)
        XCTAssertNil(feed.missing)
        XCTAssertEqual(describe(feed.release(now: 102)), ["v2"])
        XCTAssertEqual(describe(feed.release(now: 102)), [], "released once")
        XCTAssertEqual(feed.membershipVersion, 2)
    }

    func testExtrasThatArriveBeforeStartGoBehindTheirMessage() {
        let labels = Labels()
        var feed = ChannelFeed(epoch: 1)
        let key = labels.key("k")
        feed.add(keyItem(key), atSeq: 6, now: 10)
        for seq in [7, 6, 5] { feed.add(message(seq, key: seq == 7 ? key : nil), remote: true, now: 10) }
        feed.start(lastSeq: 5, keyID: messageKey, membershipVersion: 1, now: 11)
        XCTAssertEqual(describe(feed.release(now: 11), labels: labels), ["r6", "k:k", "r7"])
    }

    func testKeyIDAndMembershipVersionFollowWhatWasReleased() {
        let start = ID.random(), newer = ID.random(), newest = ID.random()
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 2, keyID: start, membershipVersion: 3, now: 10)
        XCTAssertEqual(feed.keyID, start)
        XCTAssertEqual(feed.membershipVersion, 3)

        // Held behind message 3: not released, so not yet known to have gone out.
        feed.add(keyItem(newer), atSeq: 3, now: 11)
        feed.add(memberItem(version: 4), atSeq: 3, now: 11)
        XCTAssertTrue(feed.release(now: 11).isEmpty)
        XCTAssertEqual(feed.keyID, start)
        XCTAssertEqual(feed.membershipVersion, 3)

        feed.add(message(3, key: start), now: 12)
        XCTAssertEqual(describe(feed.release(now: 12)), ["m3", "k:\(newer.string)", "v4"])
        XCTAssertEqual(feed.keyID, newer)
        XCTAssertEqual(feed.membershipVersion, 4)

        // Two keys released together: the later in commit order is the newest.
        feed.add(keyItem(newest), atSeq: 4, now: 13)
        feed.add(memberItem(version: 6), atSeq: 4, now: 13)
        feed.add(memberItem(version: 5), atSeq: 3, now: 13)
        feed.add(message(4, key: newer), now: 13)
        XCTAssertEqual(describe(feed.release(now: 13)), ["v5", "m4", "k:\(newest.string)", "v6"])
        XCTAssertEqual(feed.keyID, newest)
        XCTAssertEqual(feed.membershipVersion, 6)

        // The version never goes back.
        feed.add(memberItem(version: 2), atSeq: 4, now: 14)
        XCTAssertEqual(describe(feed.release(now: 14)), ["v2"])
        XCTAssertEqual(feed.membershipVersion, 6)
    }

    func testAKeyRecordReadAgainIsNotReleasedTwice() {
        let labels = Labels()
        let current = labels.key("current"), next = labels.key("next")
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 2, keyID: current, membershipVersion: 1, now: 10)
        // The key the start already counted (a catch-up read it again): not sent.
        feed.add(keyItem(current), atSeq: 2, now: 11)
        XCTAssertEqual(describe(feed.release(now: 11), labels: labels), [])
        // A new one held behind message 3, then read again before it went out.
        feed.add(keyItem(next), atSeq: 3, now: 11)
        feed.add(keyItem(next), atSeq: 3, now: 11)
        feed.add(message(3, key: current), now: 11)
        XCTAssertEqual(describe(feed.release(now: 11), labels: labels), ["m3", "k:next"])
        // And again after it went out.
        feed.add(keyItem(next), atSeq: 3, now: 12)
        XCTAssertEqual(describe(feed.release(now: 12), labels: labels), [])
        XCTAssertEqual(feed.keyID, next)
    }

    /// A key record whose at_seq is below the start's last_seq committed before the start's
    /// snapshot, so the snapshot's key is at least as new: however late its announcement
    /// comes, `keyID` (what a catch-up compares with the tables) must stay the newest.
    func testAKeyOlderThanTheStartDoesNotBecomeTheNewest() {
        let older = ID.random(), current = ID.random()
        // Arriving after the start.
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 5, keyID: current, membershipVersion: 2, now: 10)
        feed.add(keyItem(older), atSeq: 3, now: 11)
        _ = feed.release(now: 11)
        XCTAssertEqual(feed.keyID, current, "a late announcement of an older key made it the newest")
        // The next message, sealed with the current key, must not wait for a key already out.
        feed.add(message(6, key: current), now: 12)
        XCTAssertEqual(seqs(feed.release(now: 12)), [6])
        XCTAssertNil(feed.waitingFor)

        // Arriving before the start.
        var early = ChannelFeed(epoch: 2)
        early.add(keyItem(older), atSeq: 3, now: 10)
        early.start(lastSeq: 5, keyID: current, membershipVersion: 2, now: 11)
        _ = early.release(now: 11)
        XCTAssertEqual(early.keyID, current, "an older key held before the start made it the newest")
        early.add(message(6, key: current), now: 12)
        XCTAssertEqual(seqs(early.release(now: 12)), [6])
        XCTAssertNil(early.waitingFor)
    }

    /// Two rotations behind the same message (K2 then K3 at at_seq 5), K3 and the message
    /// it seals arriving first (say K3 and seq 6 were another node's commits, K2 this
    /// node's, whose worker reported it later). K3 is out and seals seq 6: the late K2 is
    /// older and must not become the newest key again.
    func testALateOlderKeyAtTheSameAtSeqDoesNotBecomeTheNewest() {
        let labels = Labels()
        let k1 = labels.key("1"), k2 = labels.key("2"), k3 = labels.key("3")
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 5, keyID: k1, membershipVersion: 1, now: 10)
        feed.add(message(6, key: k3), remote: true, now: 10)
        XCTAssertEqual(describe(feed.release(now: 10), labels: labels), [])
        XCTAssertEqual(feed.waitingFor, .key(k3))
        feed.add(keyItem(k3, previous: k2), atSeq: 5, now: 10.1)
        XCTAssertEqual(describe(feed.release(now: 10.1), labels: labels), ["k:3", "r6"])
        XCTAssertEqual(feed.keyID, k3)

        feed.add(keyItem(k2, previous: k1), atSeq: 5, now: 10.2)
        _ = feed.release(now: 10.2)
        XCTAssertEqual(feed.keyID, k3, "the older K2 became the newest key")
        feed.add(message(7, key: k3), remote: true, now: 10.3)
        XCTAssertEqual(describe(feed.release(now: 10.3), labels: labels), ["r7"], "seq 7 waits for a key already out")
        XCTAssertNil(feed.waitingFor)
    }

    // MARK: - Duplicates

    func testDuplicatesAreNotReleasedTwice() {
        var feed = startedFeed()
        XCTAssertTrue(feed.add(message(1), now: 101))
        XCTAssertEqual(seqs(feed.release(now: 101)), [1])
        // At or below the head: refused, whichever road.
        XCTAssertFalse(feed.add(message(1), now: 101))
        XCTAssertFalse(feed.add(message(1), remote: true, now: 101))
        XCTAssertFalse(feed.add(message(0), remote: true, now: 101))
        XCTAssertTrue(feed.release(now: 101).isEmpty)

        // The same seq twice while held behind a gap.
        XCTAssertTrue(feed.add(message(3), now: 101))
        XCTAssertFalse(feed.add(message(3), now: 101), "the local copy is already held")
        XCTAssertFalse(feed.add(message(3), remote: true, now: 101), "a local copy wins over a remote one")
        XCTAssertTrue(feed.add(message(4), remote: true, now: 101))
        feed.add(message(4), remote: true, now: 101)
        XCTAssertTrue(feed.release(now: 101).isEmpty)
        feed.add(message(2), remote: true, now: 101)
        feed.add(message(2), remote: true, now: 101)
        XCTAssertEqual(describe(feed.release(now: 101)), ["r2", "m3", "r4"])
        XCTAssertTrue(feed.release(now: 101).isEmpty)
        for seq in 1...4 {
            XCTAssertFalse(feed.add(message(seq), remote: true, now: 101))
            XCTAssertFalse(feed.add(message(seq), now: 101))
        }
        XCTAssertTrue(feed.release(now: 101).isEmpty)
        XCTAssertEqual(feed.head, 4)
    }

    func testALocalAddReplacesARemoteEntry() {
        var feed = startedFeed()
        let remoteCopy = message(2, ciphertext: Array(repeating: 0xAA, count: 32))
        let localCopy = message(2, ciphertext: Array(repeating: 0xBB, count: 32))
        XCTAssertTrue(feed.add(remoteCopy, remote: true, now: 101))
        XCTAssertTrue(feed.add(localCopy, now: 101), "the local commit replaces the remote read")
        XCTAssertFalse(feed.add(remoteCopy, remote: true, now: 101), "and is not replaced back")
        feed.add(message(1), remote: true, now: 101)
        let out = feed.release(now: 101)
        XCTAssertEqual(describe(out), ["r1", "m2"])
        guard out.count == 2, case .message(let record, let remote) = out[1] else { return XCTFail("no message 2") }
        XCTAssertFalse(remote)
        XCTAssertEqual(record, localCopy)
    }

    // MARK: - Gaps

    func testMissingAndShouldFetch() {
        var feed = startedFeed(at: 0, now: 100)
        XCTAssertNil(feed.missing)
        XCTAssertFalse(feed.shouldFetch(now: 200, grace: 0.3, listening: false), "no gap, nothing to read")

        feed.add(message(3), now: 100.1)
        XCTAssertTrue(feed.release(now: 100.1).isEmpty)
        XCTAssertEqual(feed.missing, 1...3)
        XCTAssertEqual(feed.gapSince, 100.1)
        // Within the grace an announcement is probably on its way.
        XCTAssertFalse(feed.shouldFetch(now: 100.2, grace: 0.3, listening: true))
        XCTAssertTrue(feed.shouldFetch(now: 100.5, grace: 0.3, listening: true))
        // Without LISTEN nothing else will fill it: at once.
        XCTAssertTrue(feed.shouldFetch(now: 100.1, grace: 0.3, listening: false))
        // Urgent (a catch-up found it): at once.
        feed.urgent = true
        XCTAssertTrue(feed.shouldFetch(now: 100.1, grace: 0.3, listening: true))
        // Never while a read runs.
        feed.fetchInFlight = true
        XCTAssertFalse(feed.shouldFetch(now: 100.1, grace: 0.3, listening: true))
        XCTAssertFalse(feed.shouldFetch(now: 500, grace: 0.3, listening: false))
        feed.fetchInFlight = false

        // More arrivals do not restart the clock of the same gap.
        feed.add(message(5), remote: true, now: 100.3)
        XCTAssertTrue(feed.release(now: 100.3).isEmpty)
        XCTAssertEqual(feed.missing, 1...5)
        XCTAssertEqual(feed.gapSince, 100.1)

        // Partly filled: the head moved, so the rest of the gap is not stale yet.
        feed.add(message(1), now: 100.35)
        XCTAssertEqual(seqs(feed.release(now: 100.35)), [1])
        XCTAssertEqual(feed.missing, 2...5)
        XCTAssertEqual(feed.gapSince, 100.35)
        XCTAssertFalse(feed.shouldFetch(now: 100.5, grace: 0.3, listening: true))
        XCTAssertTrue(feed.shouldFetch(now: 100.7, grace: 0.3, listening: true))

        // Closed: no gap, no clock, no urgency.
        feed.add(message(2), now: 100.4)
        feed.add(message(4), now: 100.4)
        XCTAssertEqual(seqs(feed.release(now: 100.4)), [2, 3, 4, 5])
        XCTAssertNil(feed.missing)
        XCTAssertNil(feed.gapSince)
        XCTAssertFalse(feed.urgent)
        XCTAssertFalse(feed.shouldFetch(now: 200, grace: 0.3, listening: false))

        // A new gap gets a new clock.
        feed.learn(7, now: 300)
        XCTAssertEqual(feed.missing, 6...7)
        XCTAssertEqual(feed.gapSince, 300)
        XCTAssertFalse(feed.shouldFetch(now: 300.1, grace: 0.3, listening: true))
        XCTAssertTrue(feed.shouldFetch(now: 300.5, grace: 0.3, listening: true))
    }

    func testFilledWithRows() {
        var feed = startedFeed(at: 0, now: 100)
        feed.add(message(4), now: 100)
        XCTAssertEqual(feed.missing, 1...4)
        feed.urgent = true
        feed.fetchInFlight = true
        feed.filled([message(1), message(2), message(3)], after: 0, through: 4, now: 100.5)
        XCTAssertFalse(feed.fetchInFlight)
        XCTAssertFalse(feed.urgent)
        XCTAssertEqual(describe(feed.release(now: 100.5)), ["r1", "r2", "r3", "m4"], "the local copy of 4 is kept")
        XCTAssertNil(feed.missing)
        XCTAssertNil(feed.gapSince)

        // Rows that went out already (the roads raced the read) are not released again.
        feed.fetchInFlight = true
        feed.filled([message(2), message(3), message(4)], after: 1, through: 4, now: 101)
        XCTAssertFalse(feed.fetchInFlight)
        XCTAssertTrue(feed.release(now: 101).isEmpty)
        XCTAssertEqual(feed.head, 4)
    }

    func testFilledWithNoRowsMovesPastDeletedRows() {
        var feed = startedFeed(at: 0, now: 100)
        feed.learn(5, now: 100)   // an announcement named 1...5; retention deleted them since
        feed.add(message(7), now: 100)
        XCTAssertEqual(feed.missing, 1...7)
        feed.fetchInFlight = true
        feed.filled([], after: 0, through: 5, now: 101)
        XCTAssertFalse(feed.fetchInFlight)
        XCTAssertEqual(feed.head, 5, "1...5 no longer exist: not waited for forever")
        XCTAssertEqual(feed.missing, 6...7)
        XCTAssertTrue(feed.release(now: 101).isEmpty, "6 still missing")
        feed.add(message(6), remote: true, now: 101)
        XCTAssertEqual(describe(feed.release(now: 101)), ["r6", "m7"])
        XCTAssertNil(feed.missing)
        XCTAssertNil(feed.gapSince)
    }

    func testFilledWithNoRowsClosesTheGapOnRelease() {
        var feed = startedFeed(at: 2, now: 100)
        feed.learn(4, now: 100)
        XCTAssertEqual(feed.gapSince, 100)
        feed.fetchInFlight = true
        feed.filled([], after: 2, through: 4, now: 101)
        XCTAssertEqual(feed.head, 4)
        XCTAssertNil(feed.missing)
        XCTAssertFalse(feed.shouldFetch(now: 200, grace: 0.3, listening: false))
        XCTAssertTrue(feed.release(now: 101).isEmpty)
        XCTAssertNil(feed.gapSince)
        feed.add(message(5), now: 102)
        XCTAssertEqual(seqs(feed.release(now: 102)), [5])
    }

    func testFilledWithRowsStartingAboveTheHead() {
        var feed = startedFeed(at: 0, now: 100)
        feed.learn(10, now: 100)
        feed.add(message(2), remote: true, now: 100)   // held, but deleted from the tables since
        feed.fetchInFlight = true
        feed.filled((4...10).map { message($0) }, after: 0, through: 10, now: 101)
        XCTAssertEqual(feed.head, 3, "1...3 are gone: the read starts at 4")
        XCTAssertEqual(seqs(feed.release(now: 101)), Array(4...10))
        XCTAssertEqual(feed.head, 10)
        XCTAssertNil(feed.missing)
        XCTAssertNil(feed.gapSince)
    }

    func testFilledForAnOlderRangeDoesNotMoveTheHeadBack() {
        var feed = startedFeed(at: 0, now: 100)
        feed.learn(3, now: 100)
        feed.fetchInFlight = true
        for seq in 1...6 { feed.add(message(seq), now: 100.1) }
        XCTAssertEqual(seqs(feed.release(now: 100.1)), Array(1...6))
        // The read's answer arrives after the roads filled the gap.
        feed.filled([], after: 0, through: 3, now: 101)
        XCTAssertEqual(feed.head, 6)
        feed.filled([message(3)], after: 0, through: 3, now: 101)
        XCTAssertEqual(feed.head, 6)
        XCTAssertTrue(feed.release(now: 101).isEmpty)
        feed.add(message(7), now: 102)
        XCTAssertEqual(seqs(feed.release(now: 102)), [7])
    }

    func testAPartialPageLeavesTheRestOfTheGapToRead() {
        var feed = startedFeed(at: 0, now: 100)
        feed.learn(10, now: 100)
        feed.fetchInFlight = true
        feed.filled((1...4).map { message($0) }, after: 0, through: 10, now: 101)
        XCTAssertEqual(seqs(feed.release(now: 101)), [1, 2, 3, 4])
        XCTAssertEqual(feed.missing, 5...10)
        XCTAssertFalse(feed.fetchInFlight)
        XCTAssertEqual(feed.gapSince, 101, "the head moved: the clock restarts")
        XCTAssertFalse(feed.shouldFetch(now: 101.1, grace: 0.3, listening: true))
        XCTAssertTrue(feed.shouldFetch(now: 101.5, grace: 0.3, listening: true))
        XCTAssertTrue(feed.shouldFetch(now: 101.1, grace: 0.3, listening: false))
    }

    func testABusyChannelWhoseHeadKeepsMovingHasNoStaleGap() {
        var feed = startedFeed(at: 0, now: 100)
        var now = 100.0
        // Every message arrives one behind the next: always a gap, never a stuck head.
        for seq in stride(from: 2, through: 40, by: 2) {
            feed.add(message(seq), now: now)
            XCTAssertFalse(feed.shouldFetch(now: now, grace: 0.3, listening: true))
            now += 0.1
            feed.add(message(seq - 1), remote: true, now: now)
            XCTAssertEqual(seqs(feed.release(now: now)), [seq - 1, seq])
            now += 0.1
        }
        XCTAssertNil(feed.missing)
        // A gap whose head stays put goes stale after the grace.
        feed.add(message(42), now: now)
        XCTAssertTrue(feed.release(now: now).isEmpty)
        feed.add(message(43), now: now + 0.2)
        XCTAssertTrue(feed.release(now: now + 0.2).isEmpty)
        XCTAssertEqual(feed.gapSince, now)
        XCTAssertTrue(feed.shouldFetch(now: now + 0.35, grace: 0.3, listening: true))
    }
}
