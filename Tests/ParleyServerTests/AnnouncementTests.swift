import Foundation
import ParleyProtocol
@testable import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// What a node tells the others after a commit (NOTIFY on `parley_events`): the payload
/// format and its parser, what the send function, key rotations and membership changes
/// announce against a real PostgreSQL, and the reads (`ClusterQueries`) a listener makes.
final class AnnouncementTests: XCTestCase {
    typealias Notification = PostgresConnection.Notification

    private struct Rollback: Error {}

    // MARK: - Helpers

    /// What arrives on `listener` until `done` holds (at most `timeout` seconds), then
    /// until nothing more arrives for `quiet` seconds, so a test sees extra ones too.
    private func collect(_ listener: PostgresConnection, timeout: Double = 10, quiet: Double = 0.5,
                         until done: ([Notification]) -> Bool) throws -> [Notification] {
        var received: [Notification] = []
        let deadline = Date().addingTimeInterval(timeout)
        while !done(received) && Date() < deadline {
            received += try listener.notifications(timeout: 0.2)
        }
        while true {
            let more = try listener.notifications(timeout: quiet)
            if more.isEmpty { break }
            received += more
        }
        return received
    }

    /// Nothing at all arrives within `seconds`.
    private func assertSilent(_ listener: PostgresConnection, for seconds: Double = 1, _ message: String,
                              file: StaticString = #filePath, line: UInt = #line) throws {
        let received = try collect(listener, timeout: seconds, quiet: 0.1) { _ in false }
        XCTAssertEqual(received.map(\.payload), [], message, file: file, line: line)
    }

    private func listener(_ connectionString: String) throws -> PostgresConnection {
        let connection = try PostgresConnection(connectionString: connectionString, applicationName: "parley-test-listen")
        try connection.listen(Announcement.channel)
        return connection
    }

    private func parsed(_ notifications: [Notification], file: StaticString = #filePath, line: UInt = #line) -> [Announcement] {
        notifications.compactMap { notification in
            XCTAssertEqual(notification.channel, "parley_events", file: file, line: line)
            let announcement = Announcement(payload: notification.payload)
            XCTAssertNotNil(announcement, "unparsable payload \(notification.payload)", file: file, line: line)
            return announcement
        }
    }

    private func ranges(_ announcements: [Announcement]) -> [Announcement.Range] {
        announcements.flatMap { announcement -> [Announcement.Range] in
            if case .messages(_, let ranges) = announcement { return ranges }
            return []
        }
    }

    private func backendPID(_ connection: PostgresConnection) throws -> Int32 {
        Int32(try XCTUnwrap(connection.execute("SELECT pg_backend_pid()").first).int(0))
    }

    private func hex(_ bytes: [UInt8]) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// A message payload holds exactly `m <node>` and `<uuid>:<first>-<last>` items.
    private func assertOnlyIDsAndRanges(_ payload: String, file: StaticString = #filePath, line: UInt = #line) {
        let fields = payload.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
        XCTAssertGreaterThanOrEqual(fields.count, 3, payload, file: file, line: line)
        XCTAssertEqual(fields.first, "m", file: file, line: line)
        XCTAssertNotNil(ID(fields.count > 1 ? fields[1] : ""), payload, file: file, line: line)
        for item in fields.dropFirst(2) {
            let parts = item.split(separator: ":", omittingEmptySubsequences: false)
            let bounds = parts.count == 2 ? parts[1].split(separator: "-", omittingEmptySubsequences: false) : []
            let wellFormed = parts.count == 2 && ID(String(parts[0])) != nil && bounds.count == 2
                && bounds.allSatisfy { !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }
            XCTAssertTrue(wellFormed, "item \(item) of \(payload)", file: file, line: line)
        }
    }

    // MARK: - Payload format

    func testPayloadsRoundTripForAllThreeKinds() {
        let node = ID.random(), first = ID.random(), second = ID.random(), third = ID.random()
        let announcements: [Announcement] = [
            .messages(node: node, [.init(channelID: first, first: 1, last: 1)]),
            .messages(node: node, [.init(channelID: first, first: 4, last: 9), .init(channelID: second, first: 1, last: 500),
                                   .init(channelID: third, first: 1_000_000, last: 1_000_001)]),
            .key(node: node, channelID: first, keyID: second, atSeq: 0),
            .key(node: node, channelID: first, keyID: second, atSeq: 123_456),
            .member(node: node, channelID: first, version: 1, atSeq: 0, userID: nil, action: .added, by: second),
            .member(node: node, channelID: first, version: 7, atSeq: 42, userID: third, action: .added, by: second),
            .member(node: node, channelID: first, version: 8, atSeq: 43, userID: third, action: .removed, by: third),
        ]
        for announcement in announcements {
            XCTAssertEqual(Announcement(payload: announcement.payload), announcement, announcement.payload)
            XCTAssertEqual(announcement.node, node)
            XCTAssertLessThan(announcement.payload.utf8.count, 8000)
        }
        XCTAssertEqual(Announcement.channel, "parley_events")
        // The documented text, field by field.
        XCTAssertEqual(announcements[1].payload,
                       "m \(node) \(first):4-9 \(second):1-500 \(third):1000000-1000001")
        XCTAssertEqual(announcements[3].payload, "k \(node) \(first) \(second) 123456")
        XCTAssertEqual(announcements[4].payload, "v \(node) \(first) 1 0 - added \(second)")
        XCTAssertEqual(announcements[6].payload, "v \(node) \(first) 8 43 \(third) removed \(third)")
    }

    func testMalformedPayloadsGiveNil() {
        let node = ID.random().string, channel = ID.random().string, key = ID.random().string, user = ID.random().string
        let malformed = [
            "", " ", "m", "m \(node)", "k", "v",
            // Bad node.
            "m not-a-uuid \(channel):1-2", "m \(node.uppercased()) \(channel):1-2", "k - \(channel) \(key) 1",
            // Message ranges.
            "m \(node) \(channel)", "m \(node) \(channel):", "m \(node) \(channel):1", "m \(node) \(channel):1-",
            "m \(node) \(channel):-", "m \(node) \(channel):a-b", "m \(node) \(channel):3-2", "m \(node) \(channel):0-2",
            "m \(node) \(channel):1-2-3", "m \(node) \(channel):1-2:3", "m \(node) x\(channel):1-2",
            "m \(node) \(channel.uppercased()):1-2", "m \(node) \(channel):1-2 \(channel):5-4",
            "m \(node) \(channel):1-2 junk",
            // Keys.
            "k \(node) \(channel) \(key)", "k \(node) \(channel) \(key) -1", "k \(node) \(channel) \(key) x",
            "k \(node) \(channel) \(key) 1 2", "k \(node) bad \(key) 1", "k \(node) \(channel) bad 1",
            "k \(node) \(channel):1-2",
            // Membership changes.
            "v \(node) \(channel) 2 3 \(user) added", "v \(node) \(channel) 2 3 \(user) added \(user) extra",
            "v \(node) \(channel) 0 3 \(user) added \(user)", "v \(node) \(channel) -2 3 \(user) added \(user)",
            "v \(node) \(channel) 2 -1 \(user) added \(user)", "v \(node) \(channel) x 3 \(user) added \(user)",
            "v \(node) \(channel) 2 3 \(user) joined \(user)", "v \(node) \(channel) 2 3 \(user) Added \(user)",
            "v \(node) \(channel) 2 3 bad added \(user)", "v \(node) \(channel) 2 3 \(user) added bad",
            "v \(node) \(channel) 2 3 \(user) added -", "v \(node) bad 2 3 \(user) added \(user)",
            // Unknown kinds.
            "x \(node) \(channel):1-2", "M \(node) \(channel):1-2", "mm \(node) \(channel):1-2",
            "K \(node) \(channel) \(key) 1",
        ]
        for payload in malformed {
            XCTAssertNil(Announcement(payload: payload), "accepted: \(payload)")
        }
        // An empty list of ranges is not written either.
        XCTAssertNil(Announcement(payload: Announcement.messages(node: ID.random(), []).payload))
    }

    /// "Anything malformed" includes a signed or doubled bound, which the parser must not
    /// read as another range (`split` drops the empty pieces around a `-`).
    func testSignedOrDoubledRangeBoundsAreMalformed() {
        let node = ID.random().string, channel = ID.random().string
        for range in ["-1-3", "1--3", "1-3-", "--1-3", "+1-3", "1-+3"] {
            XCTAssertNil(Announcement(payload: "m \(node) \(channel):\(range)"), "accepted range \(range)")
        }
    }

    // MARK: - Messages: parley_send_messages announces what it stored

    func testAGroupCommitAnnouncesExactlyTheStoredSeqsPerChannel() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser(), bob = try fixture.makeUser(), eve = try fixture.makeUser()
        let (first, firstKeyID) = try fixture.makeChannel(owner: alice)
        let (second, secondKeyID) = try fixture.makeChannel(owner: bob)
        let (untouched, untouchedKeyID) = try fixture.makeChannel(owner: alice)
        try fixture.addMember(alice, to: second, joinSeq: 0)
        let firstKey = try XCTUnwrap(firstKeyID), secondKey = try XCTUnwrap(secondKeyID)
        try fixture.storeMessages(second, sender: bob, key: secondKey, count: 4)   // second starts at seq 5

        let listener = try listener(fixture.connectionString)
        let committerPID = try backendPID(fixture.db)
        let batch: [(ID, Request.Message)] = [
            (alice, makeMessageRequest(channel: first, key: firstKey)),
            (eve, makeMessageRequest(channel: first, key: firstKey)),                        // not a member
            (alice, makeMessageRequest(channel: second, key: secondKey)),
            (alice, makeMessageRequest(channel: first, key: firstKey)),
            (alice, makeMessageRequest(channel: untouched, key: secondKey)),                 // wrong key
            (bob, makeMessageRequest(channel: second, key: secondKey, ciphertextBytes: 65_537)),   // too large
            (bob, makeMessageRequest(channel: second, key: secondKey)),
            (alice, makeMessageRequest(channel: first, key: firstKey)),
        ]
        let outcomes = fixture.service.send(batch.enumerated().map {
            MessageSend(id: "s\($0.offset)", context: fixture.context($0.element.0), request: $0.element.1)
        }, on: fixture.db)
        XCTAssertNotNil(untouchedKeyID)
        var stored: [ID: [Int]] = [:]
        for (index, outcome) in outcomes.enumerated() where [0, 2, 3, 6, 7].contains(index) {
            stored[batch[index].1.channelID, default: []].append(try messageResult(outcome).seq)
        }
        XCTAssertEqual(stored[first], [1, 2, 3])
        XCTAssertEqual(stored[second], [5, 6])

        let notifications = try collect(listener) { received in
            Set(self.ranges(self.parsed(received)).map(\.channelID)) == [first, second]
        }
        XCTAssertEqual(notifications.count, 1, "one group commit, one small announcement: \(notifications.map(\.payload))")
        let announcements = parsed(notifications)
        for (notification, announcement) in zip(notifications, announcements) {
            XCTAssertEqual(announcement.node, fixture.nodeID, "the announcing node is the sender's node")
            XCTAssertEqual(notification.pid, committerPID, "sent by the committing backend")
            assertOnlyIDsAndRanges(notification.payload)
        }
        let announced = ranges(announcements)
        XCTAssertEqual(announced.count, 2, "one range per channel")
        XCTAssertEqual(announced.first { $0.channelID == first }, Announcement.Range(channelID: first, first: 1, last: 3))
        XCTAssertEqual(announced.first { $0.channelID == second }, Announcement.Range(channelID: second, first: 5, last: 6))
        // A listener can read what was announced as soon as it hears of it (the NOTIFY
        // goes out at the commit), on its own connection.
        let read = try ClusterQueries.messages(announced, on: listener)
        XCTAssertEqual(read.filter { $0.channelID == first }.map(\.seq), [1, 2, 3])
        XCTAssertEqual(read.filter { $0.channelID == second }.map(\.seq), [5, 6])
        // What the tables hold is what was announced.
        for range in announced {
            let seqs = try fixture.db.execute("SELECT seq FROM messages WHERE channel_id = $1 AND seq >= $2 ORDER BY seq",
                                              [.text(range.channelID.string), .int(range.first)]).rows.map { try $0.int(0) }
            XCTAssertEqual(seqs, Array(range.first...range.last))
        }

        // Ids and seqs only: no ciphertext nor iv of any send, in any encoding.
        let payloads = notifications.map(\.payload).joined(separator: "\n")
        for (_, request) in batch {
            for bytes in [request.ciphertext, request.iv] {
                let base64 = Data(bytes).base64EncodedString()
                let base64URL = base64.replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                    .replacingOccurrences(of: "=", with: "")
                for encoded in [base64, base64URL, String(base64.prefix(16)), hex(bytes), hex(bytes).uppercased(),
                                String(hex(bytes).prefix(16))] {
                    XCTAssertFalse(payloads.contains(encoded), "payload carries message bytes")
                }
            }
        }
    }

    func testABatchWithNothingStoredAnnouncesNothing() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser(), eve = try fixture.makeUser()
        let (channel, keyID) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(keyID)
        let earlier = makeMessageRequest(channel: channel, key: key)
        XCTAssertEqual(try messageResult(fixture.send(earlier, as: alice)).seq, 1)

        let listener = try listener(fixture.connectionString)
        var reusedIV = makeMessageRequest(channel: channel, key: key)
        reusedIV.iv = earlier.iv
        let refused: [(ID, Request.Message)] = [
            (eve, makeMessageRequest(channel: channel, key: key)),
            (alice, makeMessageRequest(channel: channel, key: ID.random())),
            (alice, makeMessageRequest(channel: channel, key: key, ts: Int(Date().timeIntervalSince1970) - 3600)),
            (alice, makeMessageRequest(channel: channel, key: key, ciphertextBytes: 65_537)),
            (alice, reusedIV),
            (alice, earlier),   // a retry: answered as a duplicate, nothing new stored
        ]
        let outcomes = fixture.service.send(refused.enumerated().map {
            MessageSend(id: "r\($0.offset)", context: fixture.context($0.element.0), request: $0.element.1)
        }, on: fixture.db)
        XCTAssertTrue(try messageResult(outcomes[5]).duplicate)
        XCTAssertTrue(outcomes.allSatisfy(\.effects.isEmpty))
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 1)
        try assertSilent(listener, "nothing stored, nothing announced")

        // The listener still hears the next real commit (it was listening all along).
        XCTAssertEqual(try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key), as: alice)).seq, 2)
        let next = parsed(try collect(listener) { !$0.isEmpty })
        XCTAssertEqual(next, [.messages(node: fixture.nodeID, [.init(channelID: channel, first: 2, last: 2)])])
    }

    func testABatchOverManyChannelsIsSplitBelowTheNotifyLimit() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        var channels: [(ID, ID)] = []
        for _ in 0..<200 {
            let (channel, key) = try fixture.makeChannel(owner: alice)
            channels.append((channel, try XCTUnwrap(key)))
        }
        // Every third channel gets two sends, so ranges differ in width.
        var sends: [MessageSend] = []
        for (index, (channel, key)) in channels.enumerated() {
            sends.append(MessageSend(id: "a\(index)", context: fixture.context(alice),
                                     request: makeMessageRequest(channel: channel, key: key)))
            if index.isMultiple(of: 3) {
                sends.append(MessageSend(id: "b\(index)", context: fixture.context(alice),
                                         request: makeMessageRequest(channel: channel, key: key)))
            }
        }
        let listener = try listener(fixture.connectionString)
        let outcomes = fixture.service.send(sends, on: fixture.db)
        XCTAssertEqual(try outcomes.map { try messageResult($0).duplicate }.filter { $0 }, [])

        let all = Set(channels.map(\.0))
        let notifications = try collect(listener, timeout: 20) { received in
            Set(self.ranges(self.parsed(received)).map(\.channelID)) == all
        }
        XCTAssertGreaterThanOrEqual(notifications.count, 2, "more than fits in one payload")
        for notification in notifications {
            XCTAssertLessThanOrEqual(notification.payload.utf8.count, 8000)
            assertOnlyIDsAndRanges(notification.payload)
        }
        let announcements = parsed(notifications)
        XCTAssertTrue(announcements.allSatisfy { $0.node == fixture.nodeID })
        let announced = ranges(announcements)
        XCTAssertEqual(announced.count, 200, "each channel named once")
        XCTAssertEqual(Set(announced.map(\.channelID)), all)
        for (index, (channel, _)) in channels.enumerated() {
            let expected = Announcement.Range(channelID: channel, first: 1, last: index.isMultiple(of: 3) ? 2 : 1)
            XCTAssertEqual(announced.first { $0.channelID == channel }, expected)
        }
    }

    // MARK: - db.announce: sent at commit only

    func testAnAnnouncementGoesOutAtCommitAndNotOnRollback() throws {
        let fixture = try MessageFixture()
        let listener = try listener(fixture.connectionString)
        let rolledBack = Announcement.key(node: fixture.nodeID, channelID: ID.random(), keyID: ID.random(), atSeq: 3)
        XCTAssertThrowsError(try fixture.db.transaction {
            try fixture.db.announce(rolledBack)
            throw Rollback()
        }) { XCTAssertTrue($0 is Rollback) }
        // Not even while the transaction was open, nor after.
        try assertSilent(listener, "a rolled-back transaction announces nothing")

        // A transaction that failed inside its body is rolled back, and announces nothing either.
        XCTAssertThrowsError(try fixture.db.transaction {
            try fixture.db.announce(rolledBack)
            try fixture.db.execute("SELECT 1/0")
        })
        try assertSilent(listener, for: 0.5, "a failed transaction announces nothing")

        // An open transaction holds it until COMMIT.
        let committed = Announcement.member(node: fixture.nodeID, channelID: ID.random(), version: 4, atSeq: 9,
                                            userID: ID.random(), action: .removed, by: ID.random())
        var heardBeforeCommit: [Notification] = []
        try fixture.db.transaction {
            try fixture.db.announce(committed)
            heardBeforeCommit = try listener.notifications(timeout: 0.5)
        }
        XCTAssertEqual(heardBeforeCommit, [], "nothing before the commit")
        let heard = try collect(listener) { !$0.isEmpty }
        XCTAssertEqual(heard.map(\.payload), [committed.payload])
        XCTAssertEqual(parsed(heard), [committed])
    }

    // MARK: - Keys and membership changes announce themselves

    func testARotationAnnouncesItsKeyBehindTheChannelsLastSeq() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob) = (try relay.makeUser(), try relay.makeUser())
        let (channel, _) = try relay.createChannel(owner: alice, others: [bob])
        let firstKey = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice, bob], creator: alice)
        for _ in 0..<3 {
            _ = try relay.result(relay.send(.message(makeMessageRequest(channel: channel, key: firstKey)), as: bob))
        }
        let lastSeq = try XCTUnwrap(relay.db.execute("SELECT last_seq FROM channels WHERE id = $1",
                                                     [.text(channel.string)]).first).int(0)
        XCTAssertEqual(lastSeq, 3)

        let listener = try listener(relay.connectionString)
        let (request, _) = try relay.keyRequest(channel: channel, previous: firstKey, version: 1, recipients: [alice, bob],
                                                creator: bob)
        let outcome = relay.send(.keys(request), as: bob)
        _ = try relay.result(outcome)
        guard outcome.effects.count == 1, case .key(_, _, let atSeq) = outcome.effects[0] else {
            return XCTFail("expected one key effect")
        }
        XCTAssertEqual(atSeq, 3, "the effect carries the channel's last_seq")
        let heard = parsed(try collect(listener) { !$0.isEmpty })
        XCTAssertEqual(heard, [.key(node: relay.nodeID, channelID: channel, keyID: request.keyID, atSeq: 3)])

        // A refused rotation (stale previous key) announces nothing.
        let (stale, _) = try relay.keyRequest(channel: channel, previous: firstKey, version: 1, recipients: [alice, bob],
                                              creator: alice)
        try relay.expect(.keyConflict, relay.send(.keys(stale), as: alice))
        try assertSilent(listener, "a refused rotation is rolled back with its announcement")

        // What a listener reads for it: the record and every member's copy.
        let (record, copies) = try XCTUnwrap(ClusterQueries.key(request.keyID, on: relay.db))
        var expected = try XCTUnwrap(relay.fetchKey(channel: channel, keyID: request.keyID, as: alice).key)
        expected.encryptedKey = nil
        XCTAssertEqual(record, expected)
        XCTAssertEqual(copies, Dictionary(uniqueKeysWithValues: request.encryptedKeys.map { ($0.userID, $0.encryptedKey) }))
        XCTAssertNil(try ClusterQueries.key(ID.random(), on: relay.db))
        // Where each record sits among the messages: behind seq 0 and behind seq 3.
        XCTAssertEqual(try ClusterQueries.keyWithPlace(firstKey, on: relay.db)?.atSeq, 0)
        XCTAssertEqual(try ClusterQueries.keyWithPlace(request.keyID, on: relay.db)?.atSeq, 3)
        XCTAssertNil(try ClusterQueries.keyWithPlace(ID.random(), on: relay.db))
    }

    func testMembershipChangesAnnounceUserActionAndRequester() throws {
        let relay = try ChannelTestRelay()
        let (alice, bob, carol, dave) = (try relay.makeUser(), try relay.makeUser(), try relay.makeUser(), try relay.makeUser())
        let listener = try listener(relay.connectionString)

        // A creation alone tells nobody; one with others is announced as version 1, user "-".
        _ = try relay.createChannel(owner: alice)
        try assertSilent(listener, for: 0.5, "a channel of one has nobody to tell")
        let (channel, v1) = try relay.createChannel(owner: alice, others: [bob, carol])
        XCTAssertEqual(parsed(try collect(listener) { !$0.isEmpty }),
                       [.member(node: relay.nodeID, channelID: channel, version: 1, atSeq: 0, userID: nil, action: .added,
                                by: alice.id)])

        let key = try relay.rotate(channel: channel, previous: nil, version: 1, recipients: [alice, bob, carol], creator: alice)
        for _ in 0..<2 {
            _ = try relay.result(relay.send(.message(makeMessageRequest(channel: channel, key: key)), as: carol))
        }
        _ = try collect(listener, timeout: 2) { _ in false }   // the key's and the messages' announcements

        // channel.add by the owner: user, action and requester, behind last_seq 2.
        let v2 = try relay.next(v1, channel: channel, members: v1.members + [dave.id], signer: alice)
        let added = relay.send(.channelAdd(.init(channelID: channel, userID: dave.id, membership: v2)), as: alice)
        _ = try relay.result(added)
        guard case .member(_, _, let addedAtSeq) = added.effects.first else { return XCTFail("no member effect") }
        XCTAssertEqual(addedAtSeq, 2)
        XCTAssertEqual(parsed(try collect(listener) { !$0.isEmpty }),
                       [.member(node: relay.nodeID, channelID: channel, version: 2, atSeq: 2, userID: dave.id,
                                action: .added, by: alice.id)])

        // A member leaving on its own, behind one more message (under a new key: the add expired the old one).
        let newKey = try relay.rotate(channel: channel, previous: key, version: 2, recipients: [alice, bob, carol, dave],
                                      creator: alice)
        _ = try relay.result(relay.send(.message(makeMessageRequest(channel: channel, key: newKey)), as: carol))
        _ = try collect(listener, timeout: 2) { $0.count >= 2 }
        let v3 = try relay.next(v2, channel: channel, members: v2.members.filter { $0 != bob.id }, signer: bob)
        let left = relay.send(.channelRemove(.init(channelID: channel, userID: bob.id, membership: v3)), as: bob)
        _ = try relay.result(left)
        guard case .member(_, _, let leftAtSeq) = left.effects.first else { return XCTFail("no member effect") }
        XCTAssertEqual(leftAtSeq, 3)
        XCTAssertEqual(parsed(try collect(listener) { !$0.isEmpty }),
                       [.member(node: relay.nodeID, channelID: channel, version: 3, atSeq: 3, userID: bob.id,
                                action: .removed, by: bob.id)])

        // The owner removing someone else.
        let v4 = try relay.next(v3, channel: channel, members: v3.members.filter { $0 != carol.id }, signer: alice)
        _ = try relay.result(relay.send(.channelRemove(.init(channelID: channel, userID: carol.id, membership: v4)), as: alice))
        XCTAssertEqual(parsed(try collect(listener) { !$0.isEmpty }),
                       [.member(node: relay.nodeID, channelID: channel, version: 4, atSeq: 3, userID: carol.id,
                                action: .removed, by: alice.id)])

        // A refused change (stale version) announces nothing.
        let stale = try relay.next(v1, channel: channel, members: v1.members + [dave.id], signer: alice)
        try relay.expect(.badRequest, relay.send(.channelAdd(.init(channelID: channel, userID: dave.id, membership: stale)),
                                                 as: alice))
        try assertSilent(listener, "a refused change announces nothing")

        // MARK: What a listener reads for each of them.
        let created = try ClusterQueries.memberEvents(channelID: channel, version: 1, userID: nil, action: .added,
                                                      by: alice.id, on: relay.db)
        XCTAssertEqual(created.map(\.0.userID).sorted(), [bob.id, carol.id].sorted(), "one added per member but the creator")
        for (event, members) in created {
            XCTAssertEqual(event.channelID, channel)
            XCTAssertEqual(event.action, .added)
            XCTAssertEqual(event.by, alice.id)
            XCTAssertEqual(event.membership, v1)
            XCTAssertEqual(members, v1.members)
        }
        // Without `by` (a catch-up), the creator is the signer.
        XCTAssertEqual(try ClusterQueries.memberEvents(channelID: channel, version: 1, userID: nil, action: nil, by: nil,
                                                       on: relay.db).map(\.0.userID).sorted(), [bob.id, carol.id].sorted())

        func single(_ version: Int, userID: ID?, action: Event.Member.Action?, by: ID?) throws -> (Event.Member, [ID]) {
            let events = try ClusterQueries.memberEvents(channelID: channel, version: version, userID: userID,
                                                         action: action, by: by, on: relay.db)
            XCTAssertEqual(events.count, 1, "version \(version)")
            let (event, members) = try XCTUnwrap(events.first)
            return (event, members)
        }
        let statements = [v2, v3, v4]
        let expected: [(Int, ID, Event.Member.Action, ID)] = [
            (2, dave.id, .added, alice.id), (3, bob.id, .removed, bob.id), (4, carol.id, .removed, alice.id),
        ]
        for (version, user, action, by) in expected {
            let statement = statements[version - 2]
            // As announced.
            let (announced, members) = try single(version, userID: user, action: action, by: by)
            XCTAssertEqual(announced, Event.Member(channelID: channel, userID: user, action: action, by: by,
                                                   membership: statement))
            XCTAssertEqual(members, statement.members)
            // From the chain alone (a catch-up): the same change, `by` being the signer.
            let (derived, _) = try single(version, userID: nil, action: nil, by: nil)
            XCTAssertEqual(derived, Event.Member(channelID: channel, userID: user, action: action,
                                                 by: statement.signerID, membership: statement))
        }
        XCTAssertEqual(try ClusterQueries.memberEvents(channelID: channel, version: 9, userID: nil, action: nil, by: nil,
                                                       on: relay.db).count, 0, "no such version")

        // Each change's place among the messages, and each message's version in force.
        let changes = try ClusterQueries.changes(channelID: channel, after: 1, through: 4, on: relay.db)
        XCTAssertEqual(changes.map(\.0.membership.version), [2, 3, 4])
        XCTAssertEqual(changes.map(\.atSeq), [2, 3, 3])
        XCTAssertEqual(changes.map(\.0.userID), [dave.id, bob.id, carol.id])
        let versions = try ClusterQueries.messagesWithVersions([.init(channelID: channel, first: 1, last: 3)], on: relay.db)
        XCTAssertEqual(versions.map(\.record.seq), [1, 2, 3])
        XCTAssertEqual(versions.map(\.membershipVersion), [1, 1, 2], "seq 3 committed after the add (version 2)")
    }

    // MARK: - ClusterQueries.messages

    func testMessagesReadsWhatWasStoredByRange() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (first, firstKeyID) = try fixture.makeChannel(owner: alice)
        let (second, secondKeyID) = try fixture.makeChannel(owner: alice)
        let firstKey = try XCTUnwrap(firstKeyID), secondKey = try XCTUnwrap(secondKeyID)
        let sends = (0..<7).map { index in
            MessageSend(id: "s\(index)", context: fixture.context(alice),
                        request: index < 4 ? makeMessageRequest(channel: first, key: firstKey, ciphertextBytes: 20 + index)
                                           : makeMessageRequest(channel: second, key: secondKey))
        }
        var records: [MessageRecord] = []
        for outcome in fixture.service.send(sends, on: fixture.db) {
            guard case .message(let record, _) = outcome.effects.first else { return XCTFail("not stored") }
            records.append(record)
        }
        XCTAssertEqual(records.map(\.seq), [1, 2, 3, 4, 1, 2, 3])

        let both = try ClusterQueries.messages([.init(channelID: first, first: 1, last: 4),
                                                .init(channelID: second, first: 1, last: 3)], on: fixture.db)
        let byChannel = { (lhs: MessageRecord, rhs: MessageRecord) in (lhs.channelID.string, lhs.seq) < (rhs.channelID.string, rhs.seq) }
        XCTAssertEqual(both, records.sorted(by: byChannel), "every field as the commit had it")

        let part = try ClusterQueries.messages([.init(channelID: first, first: 2, last: 3)], on: fixture.db)
        XCTAssertEqual(part, Array(records[1...2]))
        let beyond = try ClusterQueries.messages([.init(channelID: second, first: 3, last: 9),
                                                  .init(channelID: ID.random(), first: 1, last: 5)], on: fixture.db)
        XCTAssertEqual(beyond, [records[6]])
        XCTAssertEqual(try ClusterQueries.messages([], on: fixture.db), [])
    }
}
