import Foundation
import ParleyClient
import ParleyProtocol
import ParleyServer
import ParleyTestSupport
import XCTest

/// The libwebsockets client transport against a real relay on a real database.
final class WebSocketConnectionTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func startRelay() throws -> Relay {
        var configuration = RelayConfiguration()
        configuration.port = 0
        configuration.rateLimits.enabled = false
        let relay = Relay(configuration: configuration, connectionString: try Self.database.get())
        try relay.start()
        return relay
    }

    private func url(_ relay: Relay, path: String = "/ws") -> URL {
        URL(string: "ws://127.0.0.1:\(relay.port)\(path)")!
    }

    /// The next incoming item, or nil after `seconds`.
    private func next(_ iterator: inout AsyncStream<WebSocketConnection.Incoming>.Iterator,
                      within seconds: Double = 10) async -> WebSocketConnection.Incoming? {
        let box = IteratorBox(iterator)
        let item = await withTaskGroup(of: WebSocketConnection.Incoming?.self) { group in
            group.addTask { await box.next() }
            group.addTask {
                try? await Task.sleep(nanoseconds: UInt64(seconds * 1_000_000_000))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        iterator = box.iterator
        return item
    }

    func testPingRoundTripAndNormalClose() async throws {
        let relay = try startRelay()
        defer { relay.stop() }
        let connection = WebSocketConnection(url: url(relay))
        try await connection.open()
        var incoming = connection.incoming.makeAsyncIterator()

        XCTAssertTrue(connection.send(RequestFrame(id: "p1", request: .ping).encode()))
        guard case .text(let bytes)? = await next(&incoming) else { return XCTFail("no reply") }
        guard case .result(let re, .ping(let ping)) = try ServerFrame.decode(bytes) else { return XCTFail("not a ping result") }
        XCTAssertEqual(re, "p1")
        XCTAssertLessThan(abs(ping.time - Int(Date().timeIntervalSince1970 * 1000)), 60_000)

        // Many frames queued at once arrive complete and in order.
        for index in 0..<200 { connection.send(RequestFrame(id: "q\(index)", request: .ping).encode()) }
        for index in 0..<200 {
            guard case .text(let bytes)? = await next(&incoming),
                  case .result(let re, _) = try ServerFrame.decode(bytes) else { return XCTFail("reply \(index) missing") }
            XCTAssertEqual(re, "q\(index)")
        }

        connection.close()
        guard case .closed? = await next(&incoming) else { return XCTFail("no close") }
        XCTAssertFalse(connection.send(RequestFrame(id: "late", request: .ping).encode()), "nothing is queued after close")
    }

    func testLargeRepliesAndTheFrameBound() async throws {
        let relay = try startRelay()
        defer { relay.stop() }
        let connection = WebSocketConnection(url: url(relay))
        try await connection.open()
        var incoming = connection.incoming.makeAsyncIterator()
        // A message of 262,145 bytes: the relay closes with 1009 and the client sees the code.
        connection.send(Array(repeating: UInt8(ascii: " "), count: 262_145))
        guard case .closed(let code, _)? = await next(&incoming) else { return XCTFail("not closed") }
        XCTAssertEqual(code, 1009)
    }

    func testRelayShutdownClosesWithGoingAway() async throws {
        let relay = try startRelay()
        let connection = WebSocketConnection(url: url(relay))
        try await connection.open()
        var incoming = connection.incoming.makeAsyncIterator()
        relay.stop()
        guard case .closed(let code, _)? = await next(&incoming) else { return XCTFail("not closed") }
        XCTAssertEqual(code, 1001)
    }

    func testConnectFailuresThrow() async throws {
        let relay = try startRelay()
        let port = relay.port
        relay.stop()
        let refused = WebSocketConnection(url: URL(string: "ws://127.0.0.1:\(port)/ws")!)
        do {
            try await refused.open(timeout: 5)
            XCTFail("connected to a stopped relay")
        } catch is WebSocketConnection.ConnectError {}

        let live = try startRelay()
        defer { live.stop() }
        let wrongPath = WebSocketConnection(url: url(live, path: "/elsewhere"))
        do {
            try await wrongPath.open(timeout: 5)
            XCTFail("upgraded on a path other than /ws")
        } catch is WebSocketConnection.ConnectError {}
    }
}

/// Lets a task group child advance an iterator the test owns.
private final class IteratorBox: @unchecked Sendable {
    var iterator: AsyncStream<WebSocketConnection.Incoming>.Iterator
    init(_ iterator: AsyncStream<WebSocketConnection.Incoming>.Iterator) { self.iterator = iterator }
    func next() async -> WebSocketConnection.Incoming? { await iterator.next() }
}
