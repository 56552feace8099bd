import ParleyProtocol
@testable import ParleyServer
import XCTest

/// The membership fence of `ChannelFeed`: a message committed on this node under a
/// membership version the feed has not reached waits for the changes before it (another
/// node's removal must end the removed user's subscription before that message goes out).
final class ChannelFeedFenceTests: XCTestCase {
    private let channel = ID.random()
    private let owner = ID.random(), removed = ID.random()
    /// Every message here is sealed with the key the feed starts with (no key fence).
    private let key = ID.random()

    private func message(_ seq: Int) -> MessageRecord {
        MessageRecord(channelID: channel, seq: seq, senderID: owner, keyID: key, iv: Array(repeating: 1, count: 12),
                      ciphertext: Array(repeating: 2, count: 16), ts: 0, receivedAt: 0)
    }

    private func removal(version: Int) -> ChannelFeed.Item {
        let statement = MembershipStatement(version: version, prev: Array(repeating: 0, count: 32), ts: 0, ownerID: owner,
                                            members: [owner], signerID: owner, sig: [1])
        return .member(Event.Member(channelID: channel, userID: removed, action: .removed, by: owner, membership: statement),
                       members: [owner])
    }

    private func seqs(_ items: [ChannelFeed.Item]) -> [String] {
        items.map {
            switch $0 {
            case .message(let record, _): return "m\(record.seq)"
            case .key: return "k"
            case .member(let event, _): return "v\(event.membership.version)"
            }
        }
    }

    func testAMessageUnderANewerMembershipWaitsForTheChange() {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 4, keyID: key, membershipVersion: 2, now: 0)
        feed.add(message(5), membershipVersion: 2, now: 0)
        XCTAssertEqual(seqs(feed.release(now: 0)), ["m5"])

        // Seq 6 committed here after another node's removal (version 3) at seq 5.
        feed.add(message(6), membershipVersion: 3, now: 1)
        XCTAssertEqual(seqs(feed.release(now: 1)), [], "held until version 3 is out")
        XCTAssertEqual(feed.fence, 3...3)
        XCTAssertNil(feed.missing, "a held message is not a gap to read")
        XCTAssertFalse(feed.shouldReadFence(now: 1.1, grace: 0.3))
        XCTAssertTrue(feed.shouldReadFence(now: 1.3, grace: 0.3))

        feed.add(removal(version: 3), atSeq: 5, now: 1.2)
        XCTAssertEqual(seqs(feed.release(now: 1.2)), ["v3", "m6"], "the removal first, then the message")
        XCTAssertNil(feed.fence)
        XCTAssertEqual(feed.membershipVersion, 3)
    }

    func testTheChangeArrivingFirstLetsTheMessageThroughAtOnce() {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 0, keyID: key, membershipVersion: 1, now: 0)
        feed.add(removal(version: 2), atSeq: 0, now: 0)
        feed.add(message(1), membershipVersion: 2, now: 0)
        XCTAssertEqual(seqs(feed.release(now: 0)), ["v2", "m1"])
        XCTAssertNil(feed.fence)
    }

    func testAFenceThatCannotBeMetIsPassed() {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 0, keyID: key, membershipVersion: 1, now: 0)
        feed.add(message(1), membershipVersion: 3, now: 0)
        XCTAssertEqual(seqs(feed.release(now: 0)), [])
        XCTAssertEqual(feed.fence, 2...3)
        feed.passFence()
        XCTAssertEqual(seqs(feed.release(now: 1)), ["m1"])
    }

    func testRemoteMessagesCarryNoFence() {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 0, keyID: key, membershipVersion: 1, now: 0)
        feed.add(message(1), remote: true, now: 0)
        XCTAssertEqual(seqs(feed.release(now: 0)), ["m1"])
    }
}

/// The key fence: every message is sealed with the newest key at its commit, so a message
/// whose key this feed has not released waits for that key record.
final class ChannelFeedKeyFenceTests: XCTestCase {
    private let channel = ID.random(), owner = ID.random()

    private func message(_ seq: Int, key: ID) -> MessageRecord {
        MessageRecord(channelID: channel, seq: seq, senderID: owner, keyID: key, iv: Array(repeating: 1, count: 12),
                      ciphertext: Array(repeating: 2, count: 16), ts: 0, receivedAt: 0)
    }

    private func key(_ id: ID, previous: ID?) -> ChannelFeed.Item {
        .key(KeyRecord(keyID: id, channelID: channel, creatorID: owner, previousKeyID: previous, membershipVersion: 1,
                       digest: Array(repeating: 3, count: 32), sig: [1], createdAt: 0, expiresAt: 1, encryptedKey: nil),
             copies: [:])
    }

    private func names(_ items: [ChannelFeed.Item]) -> [String] {
        items.map {
            switch $0 {
            case .message(let record, _): return "m\(record.seq)"
            case .key(let record, _): return "k\(record.keyID == first ? 1 : 2)"
            case .member: return "v"
            }
        }
    }

    private let first = ID.random(), second = ID.random()

    func testAMessageUnderAKeyNotYetOutWaitsForIt() {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 2, keyID: first, membershipVersion: 1, now: 0)
        feed.add(message(3, key: first), now: 0)
        XCTAssertEqual(names(feed.release(now: 0)), ["m3"])

        // Committed here right after another node's rotation (at seq 3) was stored.
        feed.add(message(4, key: second), now: 1)
        XCTAssertEqual(names(feed.release(now: 1)), [])
        XCTAssertEqual(feed.waitingFor, .key(second))
        XCTAssertTrue(feed.shouldReadFence(now: 1.5, grace: 0.3))

        feed.add(key(second, previous: first), atSeq: 3, now: 1.1)
        XCTAssertEqual(names(feed.release(now: 1.1)), ["k2", "m4"], "event.key before the first message it seals")
        XCTAssertNil(feed.waitingFor)
        XCTAssertEqual(feed.keyID, second)
    }

    func testAKeyReadTwiceGoesOutOnce() {
        var feed = ChannelFeed(epoch: 1)
        feed.start(lastSeq: 0, keyID: nil, membershipVersion: 1, now: 0)
        feed.add(key(first, previous: nil), atSeq: 0, now: 0)
        feed.add(key(first, previous: nil), atSeq: 0, now: 0)
        XCTAssertEqual(names(feed.release(now: 0)), ["k1"])
        feed.add(key(first, previous: nil), atSeq: 0, now: 0)
        XCTAssertEqual(names(feed.release(now: 0)), [])
    }
}
