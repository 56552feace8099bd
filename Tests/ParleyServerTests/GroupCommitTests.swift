import Foundation
import ParleyProtocol
import ParleyServer
import ParleyStore
import XCTest

/// Group commit: a batch of sends is one transaction whose every send gets its own answer,
/// checked in the contract's order as if it had come alone, with gap-free seqs.
final class GroupCommitTests: XCTestCase {
    private var now: Int { Int(Date().timeIntervalSince1970) }

    func testABatchAnswersEachSendAsIfItCameAlone() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser(), bob = try fixture.makeUser(), eve = try fixture.makeUser()
        let (first, firstKeyID) = try fixture.makeChannel(owner: alice)
        let (second, secondKeyID) = try fixture.makeChannel(owner: bob)
        try fixture.addMember(alice, to: second, joinSeq: 0)
        let firstKey = try XCTUnwrap(firstKeyID), secondKey = try XCTUnwrap(secondKeyID)

        let retried = makeMessageRequest(channel: first, key: firstKey)
        let reusedIV = makeMessageRequest(channel: first, key: firstKey)
        var sameIV = makeMessageRequest(channel: first, key: firstKey)
        sameIV.iv = reusedIV.iv
        var otherChannelSameID = makeMessageRequest(channel: second, key: secondKey)
        otherChannelSameID.clientMsgID = retried.clientMsgID
        let batch: [(String, ID, Request.Message)] = [
            ("ok-1", alice, retried),
            ("ok-2", bob, makeMessageRequest(channel: second, key: secondKey)),
            ("retry", alice, retried),                                                   // same batch, same id
            ("eve", eve, makeMessageRequest(channel: first, key: firstKey)),             // not a member
            ("big", alice, makeMessageRequest(channel: first, key: firstKey, ciphertextBytes: 65_537)),
            ("stale-key", alice, makeMessageRequest(channel: first, key: secondKey)),
            ("old-ts", alice, makeMessageRequest(channel: first, key: firstKey, ts: now - 3600)),
            ("ok-3", alice, reusedIV),
            ("iv-again", alice, sameIV),
            ("id-elsewhere", alice, otherChannelSameID),
            ("ok-4", alice, makeMessageRequest(channel: first, key: firstKey)),
        ]
        let outcomes = fixture.service.send(batch.map {
            MessageSend(id: $0.0, context: fixture.context($0.1), request: $0.2)
        }, on: fixture.db)
        XCTAssertEqual(outcomes.count, batch.count)

        let seqs = try [0, 1, 7, 10].map { try messageResult(outcomes[$0]).seq }
        XCTAssertEqual(seqs, [1, 1, 2, 3], "refused sends take no seq")
        let retry = try messageResult(outcomes[2])
        XCTAssertTrue(retry.duplicate)
        XCTAssertEqual(retry.seq, 1)
        XCTAssertEqual(try messageTestError(outcomes[3]).code, .notMember)
        XCTAssertEqual(try messageTestError(outcomes[4]).code, .tooLarge)
        let stale = try messageTestError(outcomes[5])
        XCTAssertEqual(stale.code, .keyExpired)
        XCTAssertEqual(stale.currentKeyID, firstKey)
        XCTAssertEqual(try messageTestError(outcomes[6]).code, .badTimestamp)
        XCTAssertEqual(try messageTestError(outcomes[8]).code, .badRequest)
        XCTAssertEqual(try messageTestError(outcomes[9]).code, .badRequest)
        for (index, outcome) in outcomes.enumerated() {
            XCTAssertTrue(String(decoding: outcome.reply, as: UTF8.self).contains("\"re\":\"\(batch[index].0)\""))
        }
        XCTAssertEqual(outcomes.map(\.effects.count), [1, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1], "only new rows fan out")
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(first.string)]), 3)
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages WHERE channel_id = $1", [.text(first.string)]), 3)
        XCTAssertEqual(try fixture.count("SELECT last_seq FROM channels WHERE id = $1", [.text(second.string)]), 1)
        XCTAssertEqual(try fixture.count("SELECT count(DISTINCT xmin::text) FROM messages WHERE channel_id IN ($1, $2)",
                                         [.text(first.string), .text(second.string)]), 1, "one transaction for the batch")
    }

    func testAnOutageAnswersTheWholeBatchUnavailable() throws {
        let fixture = try MessageFixture()
        let alice = try fixture.makeUser()
        let (channel, key) = try fixture.makeChannel(owner: alice)
        let broken = try fixture.connect()
        try fixture.db.execute("SELECT pg_terminate_backend($1)", [.int(Int(try broken.execute("SELECT pg_backend_pid()").first!.int(0)))])
        let sends = (0..<3).map { index in
            MessageSend(id: "s\(index)", context: fixture.context(alice), request: makeMessageRequest(channel: channel, key: key!))
        }
        let outcomes = fixture.service.send(sends, on: broken)
        XCTAssertEqual(try outcomes.map { try messageTestError($0).code }, [.unavailable, .unavailable, .unavailable])
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM messages WHERE channel_id = $1", [.text(channel.string)]), 0)
    }
}
