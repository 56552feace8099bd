import Foundation
@testable import ParleyClient
import ParleyProtocol
import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// Dropped connections: reconnect with backoff, `auth`, `subscribe` from the last seq.
final class ClientReconnectTests: XCTestCase {
    func testADroppedConnectionMidStreamResumesExactly() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "stream", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])

        let total = 80
        let sender = Task {
            for index in 1...total {
                _ = try await alice.client.send(text: "message \(index)", to: channel)
            }
        }
        func disconnects(_ recorder: EventRecorder) -> Int {
            recorder.events.filter { $0 == .connection(.disconnected) }.count
        }
        for (index, threshold) in [10, 30, 55].enumerated() {
            let reached = await bob.events.wait { $0.messages(in: channel).count >= threshold }
            XCTAssertTrue(reached)
            // Messages queued before a drop keep arriving while it reconnects: drop a live socket.
            let ready = await waitUntilReady(bob.client)
            XCTAssertTrue(ready)
            await bob.client.dropConnectionForTesting()
            let dropped = await bob.events.wait { disconnects($0) == index + 1 }
            XCTAssertTrue(dropped)
        }
        try await sender.value
        let complete = await bob.events.wait(timeout: 30) { $0.messages(in: channel).count >= total }
        XCTAssertTrue(complete, "got \(bob.events.messages(in: channel).count) of \(total)")
        try await Task.sleep(nanoseconds: 300_000_000)   // room for any duplicate to show up
        let messages = bob.events.messages(in: channel)
        XCTAssertEqual(messages.map(\.seq), Array(1...total), "every seq once, in order")
        XCTAssertEqual(messages.map(\.text), (1...total).map { "message \($0)" })
        let states = bob.events.events.compactMap { event -> ConnectionState? in
            if case .connection(let state) = event { return state }
            return nil
        }
        XCTAssertGreaterThanOrEqual(states.filter { $0 == .disconnected }.count, 3)
        XCTAssertEqual(states.last, .connected)
        await harness.stop()
    }

    func testSendsInFlightAreRetriedWithTheSameClientMessageID() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "retries", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        _ = try await alice.client.send(text: "warm up", to: channel)

        var results: [SentMessage] = []
        for index in 0..<15 {
            let send = Task { try await alice.client.send(text: "in flight \(index)", to: channel) }
            // Let the frame go out (or not) before the socket drops: both must end well.
            try await Task.sleep(nanoseconds: UInt64(index % 5) * 1_000_000)
            await alice.client.dropConnectionForTesting()
            results.append(try await send.value)
        }
        XCTAssertEqual(results.map(\.seq), Array(2...16), "each send stored exactly once")
        XCTAssertEqual(Set(results.map(\.clientMsgID)).count, 15)
        let stored = try harness.sql("SELECT count(*) FROM messages WHERE channel_id = $1::uuid", [.id(channel)])
        XCTAssertEqual(try stored.rows.first?.int(0), 16)
        let complete = await bob.events.wait { $0.messages(in: channel).count >= 16 }
        XCTAssertTrue(complete)
        XCTAssertEqual(bob.events.messages(in: channel).map(\.seq), Array(1...16))
        await harness.stop()
    }

    func testARelayRestartIsSurvived() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "restart", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        try await alice.client.send(text: "before", to: channel)
        let first = await bob.events.wait { $0.messages(in: channel).count == 1 }
        XCTAssertTrue(first)

        let port = harness.relay.port
        harness.relay.stop()
        var configuration = harness.relay.configuration
        configuration.port = port
        let second = Relay(configuration: configuration, connectionString: harness.connectionString)
        try second.start()
        defer { second.stop() }

        // Alice's send waits for the reconnect; bob resumes from seq 1 and gets it once.
        try await alice.client.send(text: "after", to: channel)
        let both = await bob.events.wait(timeout: 20) { $0.messages(in: channel).count >= 2 }
        XCTAssertTrue(both)
        XCTAssertEqual(bob.events.messages(in: channel).map(\.text), ["before", "after"])
        await harness.stop()
    }

    func testAHistoryRestoredFromAnOlderBackupIsReportedAndFollowed() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "restored", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        for text in ["one", "two", "three"] { try await alice.client.send(text: text, to: channel) }
        let seen = await bob.events.wait { $0.messages(in: channel).count == 3 }
        XCTAssertTrue(seen)

        // The database goes back to a backup taken after "one": seqs 2 and 3 are gone.
        let port = harness.relay.port
        harness.relay.stop()
        let database = try PostgresConnection(connectionString: harness.connectionString)
        try database.execute("DELETE FROM messages WHERE channel_id = $1 AND seq > 1", [.text(channel.string)])
        try database.execute("UPDATE channels SET last_seq = 1 WHERE id = $1", [.text(channel.string)])
        var configuration = harness.relay.configuration
        configuration.port = port
        let second = Relay(configuration: configuration, connectionString: harness.connectionString)
        try second.start()
        defer { second.stop() }

        // Bob resumes after 3, which the relay no longer has: a loud alert, then he follows
        // the relay's history from seq 1 and gets what is sent next.
        let alerted = await bob.events.wait(timeout: 20) {
            $0.alerts.contains(.historyRewound(channelID: channel, lastSeq: 1, seen: 3))
        }
        XCTAssertTrue(alerted, "\(bob.events.alerts)")
        try await alice.client.send(text: "after the restore", to: channel)
        let next = await bob.events.wait(timeout: 20) { $0.messages(in: channel).count == 4 }
        XCTAssertTrue(next)
        XCTAssertEqual(bob.events.messages(in: channel).map(\.text), ["one", "two", "three", "after the restore"])
        XCTAssertEqual(bob.events.messages(in: channel).last?.seq, 2)
        await harness.stop()
    }

    func testMoreThanAThousandMissedArePagedFromHistory() async throws {
        let harness = try RelayHarness()
        let alice = try await harness.user("alice", key: 0)
        let bob = try await harness.user("bob", key: 1)
        let channel = try await alice.client.createChannel(name: "backlog", members: [bob.identity.userID])
        try await bob.client.subscribe(to: [channel])
        try await alice.client.send(text: "seen", to: channel)
        let seen = await bob.events.wait { $0.messages(in: channel).count == 1 }
        XCTAssertTrue(seen)
        let stored = await bob.client.lastDeliveredSeq(of: channel)
        let position = try XCTUnwrap(stored)
        XCTAssertEqual(position, 1)
        await bob.client.close()

        let missed = Limits.replayMax + 5
        for index in 0..<missed { try await alice.client.send(text: "missed \(index)", to: channel) }

        // A new client for bob resumes from the stored position: the relay replays nothing
        // (recovered false), so the SDK pages the gap, then live messages follow.
        let again = harness.client()
        let events = EventRecorder(again)
        try await again.auth(identity: bob.identity)
        let subscribed = try await again.subscribe(to: [channel], after: [channel: position])
        XCTAssertEqual(subscribed.first?.recovered, false)
        try await alice.client.send(text: "live", to: channel)
        let total = missed + 1
        let complete = await events.wait(timeout: 60) { $0.messages(in: channel).count >= total }
        XCTAssertTrue(complete, "got \(events.messages(in: channel).count) of \(total)")
        let messages = events.messages(in: channel)
        XCTAssertEqual(messages.map(\.seq), Array(2...(total + 1)))
        XCTAssertEqual(messages.last?.text, "live")
        XCTAssertTrue(messages.allSatisfy { $0.text != nil })
        await harness.stop()
    }

    func testALostReplyIsRetriedAndAnsweredWithTheFirstResult() async throws {
        let harness = try RelayHarness()
        let url = harness.url
        let lossy = Locked<LossyTransport?>(nil)
        let client = ParleyClient(configuration: RelayHarness.fastConfiguration) {
            let transport = LossyTransport(WebSocketConnection(url: url))
            lossy.withLock { $0 = transport }
            return transport
        }
        _ = try await client.signup(username: "lossy_\(UInt32.random(in: 0...UInt32.max))", key: TestKeys.key(0))
        let channel = try await client.createChannel(name: "lost reply", members: [])
        try await client.send(text: "first", to: channel)

        // The relay commits the next message, but its reply is lost with the connection.
        lossy.withLock { $0?.loseNextMessageReply() }
        let sent = try await client.send(text: "second", to: channel)
        XCTAssertEqual(sent.seq, 2)
        let statistics = await client.statistics
        XCTAssertEqual(statistics.duplicateSends, 1, "the retry with the same client_msg_id got the first result")
        XCTAssertGreaterThanOrEqual(statistics.reconnects, 1)
        let stored = try harness.sql("SELECT count(*) FROM messages WHERE channel_id = $1::uuid", [.id(channel)])
        XCTAssertEqual(try stored.rows.first?.int(0), 2)
        await client.close()
        await harness.stop()
    }

    private func waitUntilReady(_ client: ParleyClient, timeout: Double = 10) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if await client.isReady { return true }
            try? await Task.sleep(nanoseconds: 10_000_000)
        }
        return false
    }
}

/// Wraps a real connection; when armed, swallows the next `message` result and drops the
/// socket, as a network failure right after the relay committed would.
final class LossyTransport: ClientTransport, @unchecked Sendable {
    private let inner: WebSocketConnection
    private let armed = Locked(false)
    let incoming: AsyncStream<WebSocketConnection.Incoming>

    init(_ inner: WebSocketConnection) {
        self.inner = inner
        let (stream, continuation) = AsyncStream.makeStream(of: WebSocketConnection.Incoming.self)
        incoming = stream
        let armed = self.armed
        Task {
            for await item in inner.incoming {
                if case .text(let bytes) = item, case .result(_, .message)? = try? ServerFrame.decode(bytes),
                   armed.withLock({ flag in defer { flag = false }; return flag }) {
                    inner.close()
                    continue
                }
                continuation.yield(item)
            }
            continuation.finish()
        }
    }

    func loseNextMessageReply() { armed.withLock { $0 = true } }
    func open(timeout: Double) async throws { try await inner.open(timeout: timeout) }
    func send(_ text: [UInt8]) -> Bool { inner.send(text) }
    func close() { inner.close() }
}
