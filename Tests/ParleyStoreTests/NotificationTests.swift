import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// `LISTEN` / `NOTIFY` on one libpq connection: `listen`, `notifications(timeout:)` and
/// `generation`, against a real PostgreSQL.
final class NotificationTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func connect(_ applicationName: String = "parley-test") throws -> PostgresConnection {
        try PostgresConnection(connectionString: Self.database.get(), applicationName: applicationName)
    }

    private func backendPID(_ connection: PostgresConnection) throws -> Int32 {
        Int32(try XCTUnwrap(connection.execute("SELECT pg_backend_pid()").first).int(0))
    }

    /// A channel name of this test only (the database is shared by the tests of this class).
    private func channelName() -> String {
        "test_" + Fixture.hex()
    }

    /// Everything that arrives within `seconds` (or until `count` arrived).
    private func receive(_ connection: PostgresConnection, count: Int = .max, within seconds: Double = 5)
        throws -> [PostgresConnection.Notification]
    {
        var received: [PostgresConnection.Notification] = []
        let deadline = Date().addingTimeInterval(seconds)
        while received.count < count {
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { break }
            received += try connection.notifications(timeout: min(left, 0.5))
        }
        return received
    }

    // MARK: - Delivery

    func testANotifyFromAnotherConnectionArrives() throws {
        let listener = try connect(), sender = try connect()
        let channel = channelName()
        try listener.listen(channel)
        XCTAssertEqual(try listener.execute("SELECT pg_listening_channels()").first?.string(0), channel)
        let senderPID = try backendPID(sender)

        try sender.execute("SELECT pg_notify($1, $2)", [.text(channel), .text("hello, 1-2 ünïcode")])
        let received = try receive(listener, count: 1)
        XCTAssertEqual(received.count, 1)
        XCTAssertEqual(received.first?.channel, channel)
        XCTAssertEqual(received.first?.payload, "hello, 1-2 ünïcode")
        XCTAssertEqual(received.first?.pid, senderPID)

        // Several in one transaction arrive together, in order, at its commit; an empty
        // payload is a payload.
        try sender.transaction {
            for index in 0..<5 { try sender.execute("SELECT pg_notify($1, $2)", [.text(channel), .text("n\(index)")]) }
            try sender.execute("SELECT pg_notify($1, '')", [.text(channel)])
        }
        XCTAssertEqual(try receive(listener, count: 6).map(\.payload), ["n0", "n1", "n2", "n3", "n4", ""])

        // Another channel is not heard; a notification of the listener's own backend is.
        try sender.execute("SELECT pg_notify($1, 'elsewhere')", [.text(channelName())])
        try listener.execute("SELECT pg_notify($1, 'self')", [.text(channel)])
        let own = try receive(listener, within: 1)
        XCTAssertEqual(own.map(\.payload), ["self"])
        XCTAssertEqual(own.first?.pid, try backendPID(listener))
    }

    func testNotificationsThatArriveBetweenCallsAreKept() throws {
        let listener = try connect(), sender = try connect()
        let channel = channelName()
        try listener.listen(channel)
        for index in 0..<3 { try sender.execute("SELECT pg_notify($1, $2)", [.text(channel), .text("p\(index)")]) }
        Thread.sleep(forTimeInterval: 0.3)
        // A query on the listening connection reads them off the socket first.
        XCTAssertEqual(try listener.execute("SELECT 1").first?.int(0), 1)
        let started = Date()
        XCTAssertEqual(try receive(listener, count: 3).map(\.payload), ["p0", "p1", "p2"])
        XCTAssertLessThan(Date().timeIntervalSince(started), 1, "already buffered: no wait")
        XCTAssertEqual(try listener.notifications(timeout: 0.2), [])
    }

    func testATimeoutWithNothingReturnsEmptyAfterAboutTheTimeout() throws {
        let listener = try connect()
        try listener.listen(channelName())
        for timeout in [0.0, 0.3, 1.0] {
            let started = Date()
            XCTAssertEqual(try listener.notifications(timeout: timeout), [])
            let elapsed = Date().timeIntervalSince(started)
            XCTAssertGreaterThanOrEqual(elapsed, timeout - 0.05, "returned early for \(timeout)")
            XCTAssertLessThan(elapsed, timeout + 0.5, "overslept for \(timeout)")
        }
        // A negative timeout does not block.
        let started = Date()
        XCTAssertEqual(try listener.notifications(timeout: -1), [])
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.5)
        XCTAssertTrue(listener.isConnected)
    }

    func testAWaitEndsAsSoonAsANotificationArrives() throws {
        let listener = try connect()
        let channel = channelName()
        try listener.listen(channel)
        let connectionString = try Self.database.get()
        let sent = DispatchSemaphore(value: 0)
        Thread {
            if let sender = try? PostgresConnection(connectionString: connectionString) {
                Thread.sleep(forTimeInterval: 0.3)
                _ = try? sender.execute("SELECT pg_notify($1, 'wake')", [.text(channel)])
            }
            sent.signal()
        }.start()
        let started = Date()
        let received = try listener.notifications(timeout: 10)
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(received.map(\.payload), ["wake"])
        XCTAssertLessThan(elapsed, 3, "woke by the notification, not the timeout")
        XCTAssertEqual(sent.wait(timeout: .now() + 10), .success)
    }

    // MARK: - Losing the connection

    func testATerminatedListenerThrowsConnectionFailed() throws {
        let listener = try connect("parley-test-listen"), killer = try connect()
        try listener.listen(channelName())
        let pid = try backendPID(listener)
        XCTAssertEqual(try listener.notifications(timeout: 0.1), [])

        let terminated = try XCTUnwrap(killer.execute("SELECT pg_terminate_backend($1::int, 10000)", [.int(Int(pid))]).first)
        XCTAssertTrue(try terminated.bool(0))

        // At most a call or two may still return nothing (the server's goodbye is read
        // before the end of the stream); then it throws, and does not wait out the timeout.
        let started = Date()
        var error: StoreError?
        var emptyCalls = 0
        while error == nil && Date().timeIntervalSince(started) < 15 {
            do {
                let received = try listener.notifications(timeout: 5)
                XCTAssertEqual(received, [])
                emptyCalls += 1
            } catch let thrown as StoreError {
                error = thrown
            }
        }
        let failure = try XCTUnwrap(error, "notifications never reported the lost connection")
        XCTAssertEqual(failure.code, .connectionFailed, failure.debugDescription)
        XCTAssertTrue(failure.isTransient)
        XCTAssertLessThanOrEqual(emptyCalls, 1)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3, "noticed without waiting for the timeout")
        XCTAssertFalse(listener.isConnected)

        // Not reconnected behind the caller's back: it keeps throwing until asked.
        let again = try XCTUnwrap(storeError { try listener.notifications(timeout: 0.5) })
        XCTAssertEqual(again.code, .connectionFailed)
        XCTAssertFalse(listener.isConnected)
    }

    func testGenerationCountsConnectionsAndAReconnectLosesTheListen() throws {
        let listener = try connect(), sender = try connect(), killer = try connect()
        let channel = channelName()
        XCTAssertEqual(listener.generation, 1)
        try listener.listen(channel)
        XCTAssertEqual(listener.generation, 1, "a query on a live connection is not a new connection")

        try listener.reconnect()
        XCTAssertEqual(listener.generation, 2)
        // LISTEN belonged to the old session.
        try sender.execute("SELECT pg_notify($1, 'lost')", [.text(channel)])
        XCTAssertEqual(try receive(listener, within: 1), [])
        XCTAssertEqual(try listener.execute("SELECT count(*) FROM pg_listening_channels()").first?.int(0), 0)

        // A terminated backend: the next query fails, the one after reconnects by itself.
        try listener.listen(channel)
        let pid = try backendPID(listener)
        XCTAssertTrue(try XCTUnwrap(killer.execute("SELECT pg_terminate_backend($1::int, 10000)",
                                                   [.int(Int(pid))]).first).bool(0))
        XCTAssertNotNil(storeError { try listener.execute("SELECT 1") })
        XCTAssertEqual(listener.generation, 2)
        XCTAssertEqual(try listener.execute("SELECT 1").first?.int(0), 1)
        XCTAssertEqual(listener.generation, 3, "the query reconnected on the way: the caller can tell")
        XCTAssertNotEqual(try backendPID(listener), pid)
        try sender.execute("SELECT pg_notify($1, 'lost again')", [.text(channel)])
        XCTAssertEqual(try receive(listener, within: 1), [])

        // LISTEN again on the new connection: heard again.
        try listener.listen(channel)
        try sender.execute("SELECT pg_notify($1, 'back')", [.text(channel)])
        XCTAssertEqual(try receive(listener, count: 1).map(\.payload), ["back"])
        XCTAssertEqual(listener.generation, 3)
        XCTAssertEqual(sender.generation, 1)
    }

    // MARK: - Channel names

    func testAnInvalidChannelNameIsRefused() throws {
        let connection = try connect()
        let invalid = ["", " ", "parley-events", "parley events", "a;b", "x; DROP TABLE users", "\"quoted\"", "é_events",
                       "events\n", "tab\tname", "ünïcode", "name'", "$1", "a.b"]
        for name in invalid {
            let error = try XCTUnwrap(storeError("for \(name.debugDescription)") { try connection.listen(name) })
            XCTAssertEqual(error.code, .queryFailed, name.debugDescription)
            XCTAssertFalse(error.isTransient)
        }
        // Nothing was listened to and the connection is fine.
        XCTAssertTrue(connection.isConnected)
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM pg_listening_channels()").first?.int(0), 0)
        XCTAssertEqual(try connection.execute("SELECT 41 + 1").first?.int(0), 42)

        // Valid ones are accepted.
        try connection.listen("parley_events")
        try connection.listen("abc_123")
        let listening = try connection.execute("SELECT pg_listening_channels() ORDER BY 1").rows.map { try $0.string(0) }
        XCTAssertEqual(listening, ["abc_123", "parley_events"])
    }

    /// A name the check accepts is listened to as written: NOTIFY of that same name
    /// reaches it (an unquoted identifier would be folded to lower case by PostgreSQL).
    func testAnAcceptedNameIsListenedToAsWritten() throws {
        let listener = try connect(), sender = try connect()
        let name = "Parley_Events_" + Fixture.hex().prefix(8)
        do {
            try listener.listen(name)
        } catch {
            return   // refusing capitals is fine too
        }
        let listening = try listener.execute("SELECT pg_listening_channels()").rows.map { try $0.string(0) }
        try sender.execute("SELECT pg_notify($1, 'cased')", [.text(name)])
        XCTAssertEqual(try receive(listener, count: 1, within: 2).map(\.payload), ["cased"],
                       "listen(\"\(name)\") is listening on \(listening)")
    }
}
