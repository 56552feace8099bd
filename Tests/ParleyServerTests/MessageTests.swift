import Foundation
import ParleyProtocol
import ParleyServer
import ParleyStore
import XCTest

/// `message`, `messages` and the worker side of `subscribe`, against a real PostgreSQL.
final class MessageTests: XCTestCase {
    private var now: Int { Int(Date().timeIntervalSince1970) }

    // MARK: - Sending

    func testSendAssignsSeqsInOrderAndRepliesAfterCommit() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, key) = try fixture.makeChannel(owner: alice)
        let elsewhere = try fixture.connect()

        for expected in 1...3 {
            let request = makeMessageRequest(channel: channel, key: try XCTUnwrap(key))
            let before = Int(Date().timeIntervalSince1970 * 1000)
            let outcome = fixture.send(request, as: alice, id: "send-\(expected)")
            let result = try messageResult(outcome)
            XCTAssertEqual(result.seq, expected)
            XCTAssertEqual(result.channelID, channel)
            XCTAssertFalse(result.duplicate)
            XCTAssertGreaterThanOrEqual(result.receivedAt, before - 1000)
            XCTAssertLessThanOrEqual(result.receivedAt, Int(Date().timeIntervalSince1970 * 1000) + 1000)
            XCTAssertTrue(String(decoding: outcome.reply, as: UTF8.self).contains("\"re\":\"send-\(expected)\""))

            // Committed by the time the outcome exists: another connection reads it.
            let stored = try elsewhere.execute(
                "SELECT sender_id, iv, ciphertext, ts FROM messages WHERE channel_id = $1 AND seq = $2",
                [.text(channel.string), .int(expected)]).first
            let row = try XCTUnwrap(stored)
            XCTAssertEqual(try row.string(0), alice.string)
            XCTAssertEqual(try row.bytes(1), request.iv)
            XCTAssertEqual(try row.bytes(2), request.ciphertext)
            XCTAssertEqual(try row.int(3), request.ts)

            XCTAssertEqual(outcome.effects.count, 1)
            guard case .message(let record, _)? = outcome.effects.first else {
                return XCTFail("expected a message effect")
            }
            XCTAssertEqual(record, MessageRecord(
                channelID: channel, seq: expected, senderID: alice, keyID: request.keyID, iv: request.iv,
                ciphertext: request.ciphertext, ts: request.ts, receivedAt: result.receivedAt))
        }
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 3)
    }

    func testRetryReturnsFirstResultWhateverItCarries() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, firstKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(firstKey)
        let first = makeMessageRequest(channel: channel, key: key)
        let original = try messageResult(fixture.send(first, as: alice))
        XCTAssertFalse(original.duplicate)

        func retry(_ request: Request.Message, _ what: String) throws {
            let outcome = fixture.send(request, as: alice, id: "retry")
            let result = try messageResult(outcome)
            XCTAssertEqual(result, Response.Message(channelID: channel, seq: original.seq, receivedAt: original.receivedAt,
                                                    duplicate: true), what)
            XCTAssertTrue(outcome.effects.isEmpty, "a retry is not fanned out again (\(what))")
        }

        try retry(first, "identical retry")
        try retry(makeMessageRequest(channel: channel, key: key, ciphertextBytes: 100, clientMsgID: first.clientMsgID),
                  "other content")
        try retry(makeMessageRequest(channel: channel, key: key, ts: now - 10_000, clientMsgID: first.clientMsgID),
                  "ts out of the window")
        try retry(makeMessageRequest(channel: channel, key: ID.random(), clientMsgID: first.clientMsgID), "unknown key")
        try fixture.expireKey(key)
        try retry(first, "key expired since")
        try fixture.rotateKey(channel, creator: alice)
        try retry(first, "key rotated since")
        let tooLarge = Request.Message(channelID: channel, keyID: key, iv: first.iv,
                                       ciphertext: randomMessageBytes(70_000), ts: first.ts, clientMsgID: first.clientMsgID)
        try retry(tooLarge, "too large")

        XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages", []), 1)
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 1)
    }

    func testClientMsgIDOfAnotherChannelIsBadRequest() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (one, oneKey) = try fixture.makeChannel(owner: alice)
        let (two, twoKey) = try fixture.makeChannel(owner: alice)
        let first = makeMessageRequest(channel: one, key: try XCTUnwrap(oneKey))
        _ = try messageResult(fixture.send(first, as: alice))

        let reuse = makeMessageRequest(channel: two, key: try XCTUnwrap(twoKey), clientMsgID: first.clientMsgID)
        let error = try messageTestError(fixture.send(reuse, as: alice, id: "reuse"))
        XCTAssertEqual(error.code, .badRequest)
        XCTAssertEqual(error.re, "reuse")
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(two.string)]), 0)

        // Another sender's client_msg_id is theirs: ids are unique per sender.
        let bob = try fixture.makeUser()
        try fixture.addMember(bob, to: two, joinSeq: 0)
        let bobs = makeMessageRequest(channel: two, key: try XCTUnwrap(twoKey), clientMsgID: first.clientMsgID)
        XCTAssertEqual(try messageResult(fixture.send(bobs, as: bob)).seq, 1)
    }

    func testNonMemberIsRefusedBeforeAnyOtherCheck() throws {
        let fixture = try MessageFixture(configuration: { var c = RelayConfiguration(); c.maxCiphertextBytes = 1024; return c }())
        let alice = try fixture.makeUser()
        let mallory = try fixture.makeUser()
        let (channel, key) = try fixture.makeChannel(owner: alice)
        let (own, ownKey) = try fixture.makeChannel(owner: mallory)
        let sent = makeMessageRequest(channel: own, key: try XCTUnwrap(ownKey))
        _ = try messageResult(fixture.send(sent, as: mallory))

        let attempts: [(String, Request.Message)] = [
            ("plain", makeMessageRequest(channel: channel, key: try XCTUnwrap(key))),
            ("duplicate client_msg_id", makeMessageRequest(channel: channel, key: try XCTUnwrap(key), clientMsgID: sent.clientMsgID)),
            ("too large, stale key, bad ts", makeMessageRequest(channel: channel, key: ID.random(), ciphertextBytes: 2000,
                                                                ts: now + 10_000)),
            ("channel that does not exist", makeMessageRequest(channel: ID.random(), key: ID.random())),
        ]
        for (what, request) in attempts {
            let error = try messageTestError(fixture.send(request, as: mallory, id: "x"))
            XCTAssertEqual(error.code, .notMember, what)
            XCTAssertEqual(error.re, "x", what)
        }

        // A removed member's retry of what it sent while a member is refused too.
        let bob = try fixture.makeUser()
        try fixture.addMember(bob, to: channel, joinSeq: 0)
        let bobs = makeMessageRequest(channel: channel, key: try XCTUnwrap(key))
        _ = try messageResult(fixture.send(bobs, as: bob))
        try fixture.removeMember(bob, from: channel)
        XCTAssertEqual(try messageTestError(fixture.send(bobs, as: bob)).code, .notMember)
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages WHERE channel_id = $1", [.text(channel.string)]), 1)
    }

    func testCiphertextSizeBounds() throws {
        var configuration = RelayConfiguration()
        configuration.maxCiphertextBytes = 1024
        let fixture = try MessageFixture(configuration: configuration)
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)

        XCTAssertEqual(try messageTestError(fixture.send(makeMessageRequest(channel: channel, key: key, ciphertextBytes: 1025),
                                                         as: alice)).code, .tooLarge)
        XCTAssertEqual(try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key, ciphertextBytes: 1024),
                                                      as: alice)).seq, 1)
        XCTAssertEqual(try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key, ciphertextBytes: 16),
                                                      as: alice)).seq, 2)
        // Size comes before the key and the clock (the documented order).
        let oversized = makeMessageRequest(channel: channel, key: ID.random(), ciphertextBytes: 1025, ts: now - 5000)
        XCTAssertEqual(try messageTestError(fixture.send(oversized, as: alice)).code, .tooLarge)
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 2)
    }

    func testKeyMustBeTheNewestUnexpiredOne() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let old = try XCTUnwrap(maybeKey)
        let newer = try fixture.rotateKey(channel, creator: alice)

        // A stale key: the error names the newest one.
        var outcome = fixture.send(makeMessageRequest(channel: channel, key: old), as: alice, id: "stale")
        var error = try messageTestError(outcome)
        XCTAssertEqual(error.code, .keyExpired)
        XCTAssertEqual(error.currentKeyID, newer)
        XCTAssertEqual(error.re, "stale")

        // An unknown key id, and a stale key with a bad ts: the key is checked first.
        error = try messageTestError(fixture.send(makeMessageRequest(channel: channel, key: ID.random(), ts: now + 5000), as: alice))
        XCTAssertEqual(error.code, .keyExpired)
        XCTAssertEqual(error.currentKeyID, newer)

        XCTAssertEqual(try messageResult(fixture.send(makeMessageRequest(channel: channel, key: newer), as: alice)).seq, 1)

        // The newest key, expired: still named as current, so the client rotates from it.
        try fixture.expireKey(newer)
        error = try messageTestError(fixture.send(makeMessageRequest(channel: channel, key: newer), as: alice))
        XCTAssertEqual(error.code, .keyExpired)
        XCTAssertEqual(error.currentKeyID, newer)

        // A key made already expired (a membership change at its creation).
        let born = try fixture.rotateKey(channel, creator: alice, lifetime: -5)
        error = try messageTestError(fixture.send(makeMessageRequest(channel: channel, key: born), as: alice))
        XCTAssertEqual(error.code, .keyExpired)
        XCTAssertEqual(error.currentKeyID, born)

        // No key at all: current_key_id is present and null.
        let (bare, _) = try fixture.makeChannel(owner: alice, withKey: false)
        outcome = fixture.send(makeMessageRequest(channel: bare, key: ID.random()), as: alice)
        error = try messageTestError(outcome)
        XCTAssertEqual(error.code, .keyExpired)
        XCTAssertNil(error.currentKeyID)
        XCTAssertTrue(String(decoding: outcome.reply, as: UTF8.self).contains("\"current_key_id\":null"))

        XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages", []), 1)
    }

    func testTimestampWindow() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)

        for offset in [299, -299, 0] {
            let result = try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key, ts: now + offset), as: alice))
            XCTAssertFalse(result.duplicate, "offset \(offset)")
        }
        for offset in [310, -310, 100_000, -100_000] {
            let error = try messageTestError(fixture.send(makeMessageRequest(channel: channel, key: key, ts: now + offset),
                                                          as: alice, id: "ts"))
            XCTAssertEqual(error.code, .badTimestamp, "offset \(offset)")
            XCTAssertEqual(error.re, "ts")
        }
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 3)
    }

    func testTimestampWindowIsInclusive() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)

        // Exactly ±300 and ±301 s, each sent early in a fresh second so the relay's clock
        // reads the same second as the test's.
        for (offset, accepted) in [(300, true), (-300, true), (301, false), (-301, false)] {
            let ts = waitForFreshSecond() + offset
            let outcome = fixture.send(makeMessageRequest(channel: channel, key: key, ts: ts), as: alice)
            if accepted {
                XCTAssertNoThrow(try messageResult(outcome), "offset \(offset)")
            } else {
                XCTAssertEqual(try messageTestError(outcome).code, .badTimestamp, "offset \(offset)")
            }
        }
    }

    func testRepeatedIVUnderOneKeyIsBadRequest() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)
        let iv = randomMessageBytes(12)

        XCTAssertEqual(try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key, iv: iv), as: alice)).seq, 1)
        let error = try messageTestError(fixture.send(makeMessageRequest(channel: channel, key: key, iv: iv), as: alice, id: "iv"))
        XCTAssertEqual(error.code, .badRequest)
        XCTAssertEqual(error.re, "iv")
        // The refused insert left no gap.
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 1)

        // The same iv under another key is fine.
        let next = try fixture.rotateKey(channel, creator: alice)
        XCTAssertEqual(try messageResult(fixture.send(makeMessageRequest(channel: channel, key: next, iv: iv), as: alice)).seq, 2)
        // And the ts window is checked before the iv.
        let both = makeMessageRequest(channel: channel, key: next, ts: now + 5000, iv: iv)
        XCTAssertEqual(try messageTestError(fixture.send(both, as: alice)).code, .badTimestamp)
    }

    // MARK: - Concurrency

    func testConcurrentSendersGetGaplessUniqueSeqs() throws {
        let fixture = try MessageFixture()
        let owner = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: owner)
        let key = try XCTUnwrap(maybeKey)
        var senders: [ID] = []
        for _ in 0..<8 {
            let user = try fixture.makeUser()
            try fixture.addMember(user, to: channel, joinSeq: 0)
            senders.append(user)
        }
        let people = senders
        let service = fixture.service
        let connectionString = fixture.connectionString
        let nodeID = fixture.nodeID
        let seqs = MessageThreadResults<Int>()
        let failures = MessageThreadResults<String>()
        let startLine = MessageStartLine(runners: 8)

        let finished = runOnMessageThreads(8) { index in
            let connection: PostgresConnection
            do {
                connection = try PostgresConnection(connectionString: connectionString)
            } catch {
                failures.append("connect: \(error)")
                startLine.arriveAndWait()
                return
            }
            startLine.arriveAndWait()
            let context = RequestContext(connectionID: UInt64(index), nodeID: nodeID, userID: people[index])
            for number in 0..<50 {
                let outcome = service.handle(.message(makeMessageRequest(channel: channel, key: key)), id: "\(index)-\(number)",
                                             context: context, on: connection)
                do {
                    let result = try messageResult(outcome)
                    seqs.append(result.seq)
                    guard case .message(let record, _)? = outcome.effects.first, record.seq == result.seq else {
                        failures.append("effect does not match reply")
                        continue
                    }
                } catch {
                    failures.append("\(error)")
                }
            }
        }
        XCTAssertTrue(finished, "threads did not finish")
        XCTAssertEqual(failures.all, [])
        XCTAssertEqual(seqs.all.sorted(), Array(1...400))
        let stored = try fixture.db.execute("SELECT seq FROM messages WHERE channel_id = $1 ORDER BY seq", [.text(channel.string)])
            .rows.map { try $0.int(0) }
        XCTAssertEqual(stored, Array(1...400))
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(channel.string)]), 400)
    }

    func testConcurrentIdenticalRetriesStoreOnce() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)
        let service = fixture.service
        let connectionString = fixture.connectionString
        let context = fixture.context(alice)

        for round in 1...5 {
            let request = makeMessageRequest(channel: channel, key: key)
            let results = MessageThreadResults<Response.Message>()
            let failures = MessageThreadResults<String>()
            let startLine = MessageStartLine(runners: 4)
            let finished = runOnMessageThreads(4) { _ in
                do {
                    let connection = try PostgresConnection(connectionString: connectionString)
                    startLine.arriveAndWait()
                    let outcome = service.handle(.message(request), id: "retry", context: context, on: connection)
                    let result = try messageResult(outcome)
                    if result.duplicate != outcome.effects.isEmpty { failures.append("a duplicate carried an effect") }
                    results.append(result)
                } catch {
                    failures.append("\(error)")
                }
            }
            XCTAssertTrue(finished)
            XCTAssertEqual(failures.all, [])
            let all = results.all
            XCTAssertEqual(all.count, 4)
            XCTAssertEqual(all.filter { !$0.duplicate }.count, 1, "round \(round)")
            XCTAssertEqual(Set(all.map(\.seq)), [round], "round \(round)")
            XCTAssertEqual(Set(all.map(\.receivedAt)).count, 1, "round \(round)")
        }
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages", []), 5)
    }

    func testConcurrentReuseOnTwoChannelsStoresOne() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (one, oneKey) = try fixture.makeChannel(owner: alice)
        let (two, twoKey) = try fixture.makeChannel(owner: alice)
        let service = fixture.service
        let connectionString = fixture.connectionString
        let context = fixture.context(alice)

        for _ in 1...5 {
            let clientMsgID = ID.random()
            let requests = [makeMessageRequest(channel: one, key: try XCTUnwrap(oneKey), clientMsgID: clientMsgID),
                            makeMessageRequest(channel: two, key: try XCTUnwrap(twoKey), clientMsgID: clientMsgID)]
            let codes = MessageThreadResults<String>()
            let startLine = MessageStartLine(runners: 2)
            XCTAssertTrue(runOnMessageThreads(2) { index in
                guard let connection = try? PostgresConnection(connectionString: connectionString) else {
                    startLine.arriveAndWait()
                    return codes.append("connect failed")
                }
                startLine.arriveAndWait()
                let outcome = service.handle(.message(requests[index]), id: "r", context: context, on: connection)
                if let result = try? messageResult(outcome) {
                    codes.append(result.duplicate ? "duplicate" : "stored")
                } else {
                    codes.append((try? messageTestError(outcome).code.rawValue) ?? "undecodable")
                }
            })
            XCTAssertEqual(codes.all.sorted(), ["bad_request", "stored"])
            XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages WHERE client_msg_id = $1", [.text(clientMsgID.string)]), 1)
        }
        let seqs = try fixture.count("SELECT sum(last_seq) FROM channels", [])
        XCTAssertEqual(seqs, 5, "no seq was taken by the refused sends")
    }

    // MARK: - History

    func testHistoryStartsAtTheJoinCut() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let bob = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)
        for _ in 1...5 { _ = try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key), as: alice)) }
        try fixture.addMember(bob, to: channel, joinSeq: 5)
        var sent: [Request.Message] = []
        for _ in 6...10 {
            let request = makeMessageRequest(channel: channel, key: key)
            sent.append(request)
            _ = try messageResult(fixture.send(request, as: alice))
        }

        var page = try historyResult(fixture.history(Request.Messages(channelID: channel), as: bob))
        XCTAssertEqual(page.messages.map(\.seq), Array(6...10))
        XCTAssertFalse(page.hasMore)
        XCTAssertEqual(page.messages.map(\.ciphertext), sent.map(\.ciphertext))
        XCTAssertEqual(page.messages.map(\.iv), sent.map(\.iv))
        XCTAssertEqual(Set(page.messages.map(\.senderID)), [alice])
        XCTAssertEqual(Set(page.messages.map(\.keyID)), [key])
        XCTAssertEqual(page.messages.map(\.ts), sent.map(\.ts))

        page = try historyResult(fixture.history(Request.Messages(channelID: channel, after: 2), as: bob))
        XCTAssertEqual(page.messages.map(\.seq), Array(6...10))
        XCTAssertFalse(page.hasMore)
        page = try historyResult(fixture.history(Request.Messages(channelID: channel, before: 8), as: bob))
        XCTAssertEqual(page.messages.map(\.seq), [6, 7])
        XCTAssertFalse(page.hasMore, "what lies below the cut does not count")
        page = try historyResult(fixture.history(Request.Messages(channelID: channel, before: 8, limit: 1), as: bob))
        XCTAssertEqual(page.messages.map(\.seq), [7])
        XCTAssertTrue(page.hasMore)
        page = try historyResult(fixture.history(Request.Messages(channelID: channel, before: 5), as: bob))
        XCTAssertEqual(page.messages.map(\.seq), [])
        XCTAssertFalse(page.hasMore)

        page = try historyResult(fixture.history(Request.Messages(channelID: channel), as: alice))
        XCTAssertEqual(page.messages.map(\.seq), Array(1...10))

        // Removed and added again: history from the new join.
        try fixture.removeMember(bob, from: channel)
        try fixture.addMember(bob, to: channel, joinSeq: 10)
        page = try historyResult(fixture.history(Request.Messages(channelID: channel, after: 0), as: bob))
        XCTAssertEqual(page.messages.map(\.seq), [])
        XCTAssertFalse(page.hasMore)
    }

    func testHistoryPagingInBothDirections() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        try fixture.storeMessages(channel, sender: alice, key: try XCTUnwrap(maybeKey), count: 120)

        func page(after: Int? = nil, before: Int? = nil, limit: Int? = nil, as user: ID? = nil) throws -> ([Int], Bool) {
            let outcome = fixture.history(Request.Messages(channelID: channel, after: after, before: before, limit: limit),
                                          as: user ?? alice)
            let result = try historyResult(outcome)
            return (result.messages.map(\.seq), result.hasMore)
        }
        func check(_ got: ([Int], Bool), _ seqs: ClosedRange<Int>, _ hasMore: Bool, line: UInt = #line) {
            XCTAssertEqual(got.0, Array(seqs), line: line)
            XCTAssertEqual(got.1, hasMore, "has_more", line: line)
        }

        // Backwards from the end (default limit 50), newest first in pages, each ascending.
        check(try page(), 71...120, true)
        check(try page(before: 71), 21...70, true)
        check(try page(before: 21), 1...20, false)
        check(try page(before: 51, limit: 50), 1...50, false)
        check(try page(before: 52, limit: 50), 2...51, true)
        XCTAssertEqual(try page(before: 1).0, [])
        XCTAssertEqual(try page(before: 1).1, false)

        // Forwards.
        check(try page(after: 0), 1...50, true)
        check(try page(after: 50, limit: 200), 51...120, false)
        check(try page(after: 100), 101...120, false)
        check(try page(after: 110, limit: 10), 111...120, false)
        check(try page(after: 109, limit: 10), 110...119, true)
        XCTAssertEqual(try page(after: 120).0, [])
        XCTAssertEqual(try page(after: 120).1, false)
        XCTAssertEqual(try page(after: 500).0, [])

        // Both bounds: has_more is about the requested range.
        check(try page(after: 10, before: 20, limit: 5), 11...15, true)
        check(try page(after: 10, before: 16, limit: 5), 11...15, false)
        XCTAssertEqual(try page(after: 10, before: 11).0, [])

        // A member that joined at 100.
        let bob = try fixture.makeUser()
        try fixture.addMember(bob, to: channel, joinSeq: 100)
        check(try page(limit: 20, as: bob), 101...120, false)
        check(try page(limit: 10, as: bob), 111...120, true)
        check(try page(before: 111, limit: 10, as: bob), 101...110, false)
        check(try page(after: 50, limit: 5, as: bob), 101...105, true)

        // limit outside 1...200.
        for limit in [0, 201] {
            let outcome = fixture.history(Request.Messages(channelID: channel, limit: limit), as: alice)
            XCTAssertEqual(try messageTestError(outcome).code, .badRequest)
        }
    }

    func testHistoryPageStopsBeforeOneMebibyte() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)
        for _ in 1...30 {
            _ = try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key, ciphertextBytes: 60 * 1024), as: alice))
        }

        // Forwards: pages stop early and together cover everything once.
        var seen: [Int] = []
        var after = 0
        var pages = 0
        while true {
            let outcome = fixture.history(Request.Messages(channelID: channel, after: after, limit: 50), as: alice)
            XCTAssertLessThanOrEqual(outcome.reply.count, Limits.pageByteCap)
            let result = try historyResult(outcome)
            pages += 1
            seen += result.messages.map(\.seq)
            if pages == 1 {
                XCTAssertTrue(result.hasMore)
                XCTAssertGreaterThan(result.messages.count, 5)
                XCTAssertLessThan(result.messages.count, 30)
            }
            guard result.hasMore, let last = result.messages.last?.seq else { break }
            after = last
            XCTAssertLessThan(pages, 10)
        }
        XCTAssertEqual(seen, Array(1...30))
        XCTAssertGreaterThanOrEqual(pages, 3)

        // Backwards: the newest messages that fit, ascending, more below.
        let outcome = fixture.history(Request.Messages(channelID: channel), as: alice)
        XCTAssertLessThanOrEqual(outcome.reply.count, Limits.pageByteCap)
        let newest = try historyResult(outcome)
        XCTAssertTrue(newest.hasMore)
        XCTAssertEqual(newest.messages.last?.seq, 30)
        XCTAssertLessThan(newest.messages.count, 30)
        XCTAssertEqual(newest.messages.map(\.seq), Array((31 - newest.messages.count)...30))
        XCTAssertEqual(newest.messages.map(\.ciphertext.count), Array(repeating: 60 * 1024, count: newest.messages.count))
    }

    func testHistoryOfAChannelNotJoinedIsNotMember() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let mallory = try fixture.makeUser()
        let (channel, _) = try fixture.makeChannel(owner: alice)
        for request in [Request.Messages(channelID: channel), Request.Messages(channelID: ID.random(), after: 0)] {
            let error = try messageTestError(fixture.history(request, as: mallory, id: "peek"))
            XCTAssertEqual(error.code, .notMember)
            XCTAssertEqual(error.re, "peek")
        }
    }

    // MARK: - Subscriptions (worker side)

    func testStartSubscriptionsFailsWholeRequest() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (one, oneKey) = try fixture.makeChannel(owner: alice)
        let (two, twoKey) = try fixture.makeChannel(owner: alice)
        try fixture.storeMessages(one, sender: alice, key: try XCTUnwrap(oneKey), count: 3)
        let foreign = try fixture.makeChannel(owner: try fixture.makeUser()).channel

        func start(_ channels: [Request.SubscribeChannel]) -> Result<[SubscriptionStart], ErrorFrame> {
            fixture.service.startSubscriptions(Request.Subscribe(channels: channels), id: "sub", context: fixture.context(alice),
                                               on: fixture.db)
        }

        for channels in [
            [Request.SubscribeChannel(channelID: one, after: 0), Request.SubscribeChannel(channelID: foreign)],
            [Request.SubscribeChannel(channelID: ID.random()), Request.SubscribeChannel(channelID: two)],
            // not_member wins over a bad `after` that comes earlier in the list.
            [Request.SubscribeChannel(channelID: one, after: 99), Request.SubscribeChannel(channelID: foreign)],
        ] {
            guard case .failure(let error) = start(channels) else { return XCTFail("expected not_member") }
            XCTAssertEqual(error.code, .notMember)
            XCTAssertEqual(error.re, "sub")
        }

        guard case .failure(let error) = start([Request.SubscribeChannel(channelID: two),
                                                Request.SubscribeChannel(channelID: one, after: 4)]) else {
            return XCTFail("expected bad_request")
        }
        XCTAssertEqual(error.code, .badRequest)
        XCTAssertEqual(error.re, "sub")

        let started = try start([Request.SubscribeChannel(channelID: one, after: 3),
                                 Request.SubscribeChannel(channelID: two)]).get()
        // Each start also says where this node's feed of the channel begins: its newest key
        // and membership version in the same snapshot.
        XCTAssertEqual(started, [
            SubscriptionStart(channelID: one, lastSeq: 3, recovered: true, replayFrom: 3, syncedSeq: 3,
                              currentKeyID: oneKey, membershipVersion: 1),
            SubscriptionStart(channelID: two, lastSeq: 0, recovered: true, currentKeyID: twoKey, membershipVersion: 1),
        ])

        guard case .failure(let unauthenticated) = fixture.service.startSubscriptions(
            Request.Subscribe(channels: [Request.SubscribeChannel(channelID: one)]), id: "anon",
            context: fixture.context(nil), on: fixture.db) else { return XCTFail("expected unauthenticated") }
        XCTAssertEqual(unauthenticated.code, .unauthenticated)
    }

    func testStartSubscriptionsCountsMissedFromTheCut() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let bob = try fixture.makeUser()
        let carol = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        try fixture.storeMessages(channel, sender: alice, key: try XCTUnwrap(maybeKey), count: 1001)
        try fixture.addMember(bob, to: channel, joinSeq: 500)
        try fixture.addMember(carol, to: channel, joinSeq: 1)

        func start(_ user: ID, after: Int?) throws -> SubscriptionStart {
            let result = fixture.service.startSubscriptions(
                Request.Subscribe(channels: [Request.SubscribeChannel(channelID: channel, after: after)]), id: "s",
                context: fixture.context(user), on: fixture.db)
            var start = try XCTUnwrap(result.get().first)
            XCTAssertEqual(start.currentKeyID, maybeKey)
            XCTAssertEqual(start.membershipVersion, 1)
            start.currentKeyID = nil
            start.membershipVersion = 0
            return start   // compared below as the plan alone
        }

        XCTAssertEqual(try start(alice, after: 0), SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: false))
        XCTAssertEqual(try start(alice, after: 1),
                       SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: true, replayFrom: 1, syncedSeq: 1))
        XCTAssertEqual(try start(alice, after: 1001),
                       SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: true, replayFrom: 1001, syncedSeq: 1001))
        XCTAssertEqual(try start(alice, after: nil), SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: true))
        // The cut counts: 1001 − 1 = 1000 missed for carol, 501 for bob.
        XCTAssertEqual(try start(carol, after: 0),
                       SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: true, replayFrom: 1, syncedSeq: 1))
        XCTAssertEqual(try start(bob, after: 0),
                       SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: true, replayFrom: 500, syncedSeq: 500))
        XCTAssertEqual(try start(bob, after: 700),
                       SubscriptionStart(channelID: channel, lastSeq: 1001, recovered: true, replayFrom: 700, syncedSeq: 700))
    }

    func testReplayPagesAscendingUpToThrough() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)
        for _ in 1...30 { _ = try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key), as: alice)) }
        let history = try historyResult(fixture.history(Request.Messages(channelID: channel, after: 0, limit: 200), as: alice))

        var replayed: [MessageRecord] = []
        var after = 10
        while true {
            let page = try fixture.service.replay(channelID: channel, after: after, through: 25, limit: 7, on: fixture.db).get()
            XCTAssertLessThanOrEqual(page.count, 7)
            guard let last = page.last else { break }
            replayed += page
            after = last.seq
        }
        XCTAssertEqual(replayed.map(\.seq), Array(11...25))
        XCTAssertEqual(replayed, Array(history.messages[10..<25]))
        XCTAssertEqual(try fixture.service.replay(channelID: channel, after: 25, through: 25, limit: 7, on: fixture.db).get(), [])
    }

    func testReplayPagesStopAtTheirByteBudget() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, maybeKey) = try fixture.makeChannel(owner: alice)
        let key = try XCTUnwrap(maybeKey)
        for _ in 1...10 {
            _ = try messageResult(fixture.send(makeMessageRequest(channel: channel, key: key, ciphertextBytes: 60_000),
                                               as: alice))
        }
        // 60,000-byte messages, 130,000 bytes a page: the third starts after 120,000 < 130,000.
        let page = try fixture.service.replay(channelID: channel, after: 0, through: 10, limit: 200,
                                              byteBudget: 130_000, on: fixture.db).get()
        XCTAssertEqual(page.map(\.seq), [1, 2, 3])
        // A message larger than the whole budget still comes, alone: paging makes progress.
        let single = try fixture.service.replay(channelID: channel, after: 3, through: 10, limit: 200,
                                                byteBudget: 1_000, on: fixture.db).get()
        XCTAssertEqual(single.map(\.seq), [4])
        XCTAssertEqual(single.first?.ciphertext.count, 60_000)
    }

    /// Sleeps to just after the next second boundary and returns that second.
    private func waitForFreshSecond() -> Int {
        let time = Date().timeIntervalSince1970
        let next = time.rounded(.down) + 1
        Thread.sleep(forTimeInterval: next - time + 0.01)
        return Int(Date().timeIntervalSince1970)
    }
}
