import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import ParleyStore
import XCTest

/// SDK clients spread over two relay nodes on one database: what one node commits reaches
/// the other node's subscribers decrypted, verified and in order; rotations and membership
/// changes made on one node hold on the other.
final class ClientClusterTests: XCTestCase {
    func testMembersOnTwoNodesReadEveryMessageInOrder() async throws {
        let harness = try RelayHarness()
        let second = try harness.addNode()
        let alice = try await harness.user("alice", key: 0, node: 0)
        let bob = try await harness.user("bob", key: 1, node: second)
        let carol = try await harness.user("carol", key: 2, node: second)
        let people = [alice, bob, carol]

        let channel = try await alice.client.createChannel(name: "two nodes",
                                                           members: [bob.identity.userID, carol.identity.userID])
        // bob learns of the channel from node 0's announcement, on node 1.
        let bobLearned = await bob.events.wait { recorder in
            recorder.events.contains(.membership(channelID: channel, userID: bob.identity.userID, action: .added,
                                                 by: alice.identity.userID))
        }
        XCTAssertTrue(bobLearned, "event.member of the creation crossed nodes")
        for person in people { try await person.client.subscribe(to: [channel]) }

        var sent: [String] = []
        for round in 0..<4 {
            for (index, person) in people.enumerated() {
                let text = "round \(round) from \(index)"
                _ = try await person.client.send(text: text, to: channel)
                sent.append(text)
            }
        }
        for person in people {
            let complete = await person.events.wait { $0.messages(in: channel).count >= sent.count }
            XCTAssertTrue(complete, "\(person.identity.username) got \(person.events.messages(in: channel).count) of \(sent.count)")
            let messages = person.events.messages(in: channel)
            XCTAssertEqual(messages.map(\.seq), Array(1...sent.count), "exactly once, in order")
            XCTAssertEqual(messages.map(\.text), sent)
            XCTAssertEqual(person.events.alerts, [])
        }
        await harness.stop()
    }

    func testARemovalOnOneNodeEndsTheSubscriptionOnTheOther() async throws {
        let harness = try RelayHarness()
        let second = try harness.addNode()
        let alice = try await harness.user("alice", key: 0, node: 0)
        let bob = try await harness.user("bob", key: 1, node: second)
        let carol = try await harness.user("carol", key: 2, node: second)
        let channel = try await alice.client.createChannel(name: "shrink", members: [bob.identity.userID, carol.identity.userID])
        for person in [bob, carol] { try await person.client.subscribe(to: [channel]) }
        let first = try await alice.client.send(text: "all three", to: channel)
        let carolRead = await carol.events.wait { $0.messages(in: channel).count == 1 }
        XCTAssertTrue(carolRead)

        // Removed through node 0; the next message is sent through node 1, where carol is.
        try await alice.client.remove(userID: carol.identity.userID, from: channel)
        let afterRemoval = try await bob.client.send(text: "without carol", to: channel)
        XCTAssertNotEqual(afterRemoval.keyID, first.keyID, "the removal expired the key on every node")

        let bobRead = await bob.events.wait { $0.messages(in: channel).count == 2 }
        XCTAssertTrue(bobRead)
        let carolTold = await carol.events.wait { recorder in
            recorder.events.contains(.membership(channelID: channel, userID: carol.identity.userID, action: .removed,
                                                 by: alice.identity.userID))
        }
        XCTAssertTrue(carolTold, "event.member of the removal crossed nodes")
        try await Task.sleep(nanoseconds: 300_000_000)
        XCTAssertEqual(carol.events.messages(in: channel).map(\.text), ["all three"], "nothing after the removal")
        await harness.stop()
    }

    func testARotationOnOneNodeIsUsedOnTheOther() async throws {
        let harness = try RelayHarness()
        let second = try harness.addNode()
        let alice = try await harness.user("alice", key: 0, node: 0)
        let bob = try await harness.user("bob", key: 1, node: second)
        let channel = try await alice.client.createChannel(name: "rotate", members: [bob.identity.userID])
        try await alice.client.subscribe(to: [channel])
        try await bob.client.subscribe(to: [channel])
        let before = try await alice.client.send(text: "old key", to: channel)

        let rotated = try await bob.client.rotateKey(in: channel)
        XCTAssertNotEqual(rotated, before.keyID)
        let after = try await alice.client.send(text: "new key", to: channel)
        XCTAssertEqual(after.keyID, rotated, "alice, on the other node, sent with bob's key")
        for person in [alice, bob] {
            let complete = await person.events.wait { $0.messages(in: channel).count == 2 }
            XCTAssertTrue(complete)
            XCTAssertEqual(person.events.messages(in: channel).map(\.text), ["old key", "new key"])
            XCTAssertEqual(person.events.alerts, [])
        }
        await harness.stop()
    }
}
