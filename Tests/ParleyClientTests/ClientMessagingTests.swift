import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import ParleyStore
import XCTest

/// SDK clients against an in-process relay on a real database, over real sockets.
final class ClientMessagingTests: XCTestCase {
    func testThreeClientsEveryMessageDecryptsAndVerifiesForEveryMember() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let carol = try await harness.user("carol", key: 2)
        let people = [alice, bob, carol]

        let channel = try await alice.client.createChannel(name: "trio", members: [bob.identity.userID, carol.identity.userID])
        for person in people { try await person.client.subscribe(to: [channel]) }

        var sent: [String] = []
        for round in 0..<3 {
            for (index, person) in people.enumerated() {
                let text = "round \(round) from \(index): \u{1F510}"
                let result = try await person.client.send(text: text, to: channel)
                XCTAssertEqual(result.seq, sent.count + 1)
                sent.append(text)
            }
        }
        for person in people {
            let complete = await person.events.wait { $0.messages(in: channel).count >= sent.count }
            XCTAssertTrue(complete, "\(person.identity.username) got \(person.events.messages(in: channel).count) of \(sent.count)")
            let messages = person.events.messages(in: channel)
            XCTAssertEqual(messages.map(\.seq), Array(1...sent.count))
            XCTAssertEqual(messages.map(\.text), sent)
            XCTAssertEqual(messages.map(\.senderID), (0..<3).flatMap { _ in people.map(\.identity.userID) })
            XCTAssertEqual(person.events.alerts, [])
        }

        // History reads the same, decrypted and verified, for every member.
        for person in people {
            let page = try await person.client.history(of: channel)
            XCTAssertEqual(page.messages.map(\.text), sent)
            XCTAssertFalse(page.hasMore)
        }
        // The member list comes from the verified chain, with pinned fingerprints.
        let members = try await bob.client.members(of: channel)
        XCTAssertEqual(Set(members.map(\.userID)), Set(people.map(\.identity.userID)))
        XCTAssertEqual(members.first { $0.userID == alice.identity.userID }?.role, .owner)
        XCTAssertEqual(members.first { $0.userID == carol.identity.userID }?.fingerprint, carol.identity.fingerprint)
        await harness.stop()
    }

    func testShortKeyTTLForcesRotationWithoutAFailedSend() async throws {
        let harness = try RelayHarness(keyTTLSeconds: 2)
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "ttl", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])

        var keys: [ID] = []
        var texts: [String] = []
        let start = Date()
        var index = 0
        while Date().timeIntervalSince(start) < 6.5 {
            let sender = index % 3 == 0 ? bob : alice
            let text = "tick \(index)"
            let result = try await sender.client.send(text: text, to: channel)   // never fails
            keys.append(result.keyID)
            texts.append(text)
            index += 1
            try await Task.sleep(nanoseconds: 150_000_000)
        }
        XCTAssertGreaterThanOrEqual(Set(keys).count, 3, "a 2 s TTL over 6.5 s rotates at least twice")
        let complete = await bob.events.wait { $0.messages(in: channel).count >= texts.count }
        XCTAssertTrue(complete)
        XCTAssertEqual(bob.events.messages(in: channel).map(\.text), texts)
        let rotations = bob.events.events.filter { if case .keyRotated = $0 { return true } else { return false } }
        XCTAssertGreaterThanOrEqual(rotations.count, 3)
        await harness.stop()
    }

    func testAnAddedMemberMakesTheNextSenderRotateAndReadsFromThenOn() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let carol = try await harness.user("carol", key: 2)
        let channel = try await alice.client.createChannel(name: "grow", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        let before = try await alice.client.send(text: "before carol", to: channel)

        try await alice.client.add(userID: carol.identity.userID, to: channel)
        // Carol learns it was added without subscribing to anything.
        let told = await carol.events.wait { recorder in
            recorder.events.contains(.membership(channelID: channel, userID: carol.identity.userID, action: .added,
                                                 by: alice.identity.userID))
        }
        XCTAssertTrue(told)
        try await carol.client.subscribe(to: [channel])

        // The next sender (bob, not the one who added) rotates: the old key expired with the change.
        let after = try await bob.client.send(text: "welcome carol", to: channel)
        XCTAssertNotEqual(after.keyID, before.keyID)
        let copies = try harness.sql("SELECT user_id::text FROM channel_key_copies WHERE key_id = $1::uuid", [.id(after.keyID)])
        XCTAssertEqual(Set(try copies.rows.map { try $0.string(0) }),
                       Set([alice, bob, carol].map(\.identity.userID.string)), "wrapped for exactly the verified members")

        let got = await carol.events.wait { $0.messages(in: channel).count >= 1 }
        XCTAssertTrue(got)
        XCTAssertEqual(carol.events.messages(in: channel).map(\.text), ["welcome carol"])
        // Carol's history starts at her join: the earlier message is not hers to read.
        let history = try await carol.client.history(of: channel)
        XCTAssertEqual(history.messages.map(\.text), ["welcome carol"])
        let bobSees = await bob.events.wait { $0.messages(in: channel).count >= 2 }
        XCTAssertTrue(bobSees)
        XCTAssertEqual(bob.events.messages(in: channel).map(\.text), ["before carol", "welcome carol"])
        await harness.stop()
    }

    func testARemovedMemberCannotReadWhatFollows() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let carol = try await harness.user("carol", key: 2)
        let channel = try await alice.client.createChannel(name: "shrink", members: [bob.identity.userID, carol.identity.userID])
        for person in [bob, carol] { try await person.client.subscribe(to: [channel]) }
        let first = try await alice.client.send(text: "all three", to: channel)
        let carolRead = await carol.events.wait { $0.messages(in: channel).count == 1 }
        XCTAssertTrue(carolRead)

        try await alice.client.remove(userID: carol.identity.userID, from: channel)
        let second = try await alice.client.send(text: "without carol", to: channel)
        XCTAssertNotEqual(second.keyID, first.keyID)

        // The new key was never wrapped for carol, and the relay no longer serves her the channel.
        let copies = try harness.sql("SELECT user_id::text FROM channel_key_copies WHERE key_id = $1::uuid", [.id(second.keyID)])
        XCTAssertEqual(Set(try copies.rows.map { try $0.string(0) }), Set([alice, bob].map(\.identity.userID.string)))
        do {
            _ = try await carol.client.history(of: channel)
            XCTFail("a removed member read history")
        } catch let error as ClientError {
            XCTAssertEqual(error.code, .notMember)
        }
        let bobRead = await bob.events.wait { $0.messages(in: channel).count == 2 }
        XCTAssertTrue(bobRead)
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(carol.events.messages(in: channel).map(\.text), ["all three"])
        XCTAssertTrue(carol.events.events.contains(.membership(
            channelID: channel, userID: carol.identity.userID, action: .removed, by: alice.identity.userID)))
        await harness.stop()
    }

    func testTwoClientsRotatingAtOnceEndOnTheWinnersKey() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        for round in 0..<3 {
            let channel = try await alice.client.createChannel(name: "race \(round)", members: [bob.identity.userID])
            _ = try await bob.client.members(of: channel)   // both know the chain: the race is on the key alone
            // Neither has a key: both rotate with no previous key; one wins, the other adopts it.
            async let fromAlice = alice.client.send(text: "alice first?", to: channel)
            async let fromBob = bob.client.send(text: "bob first?", to: channel)
            let (a, b) = try await (fromAlice, fromBob)
            XCTAssertEqual(a.keyID, b.keyID, "both end on the winner's key")
            let stored = try harness.sql("SELECT count(*) FROM channel_keys WHERE channel_id = $1::uuid", [.id(channel)])
            XCTAssertEqual(try stored.rows.first?.int(0), 1)

            // Early rotations at once: the loser adopts the winner's key rather than failing.
            async let rotatedByAlice = alice.client.rotateKey(in: channel)
            async let rotatedByBob = bob.client.rotateKey(in: channel)
            let (ra, rb) = try await (rotatedByAlice, rotatedByBob)
            let next = try await (alice.client.send(text: "after", to: channel), bob.client.send(text: "after", to: channel))
            XCTAssertEqual(next.0.keyID, next.1.keyID)
            XCTAssertTrue([ra, rb].contains(next.0.keyID))
        }
        // The conflict path ran (the relay refused the slower rotation), not just a lucky order.
        let (sa, sb) = (await alice.client.statistics, await bob.client.statistics)
        XCTAssertGreaterThanOrEqual(sa.keyConflicts + sb.keyConflicts, 1)
        await harness.stop()
    }
}
