import Foundation
@testable import ParleyClient
import ParleyCrypto
import ParleyProtocol
import ParleyServer
import ParleyStore
import ParleyTestSupport
import XCTest

/// RSA keys are slow to make: a few, made once per process and shared by the tests.
enum TestKeys {
    private static let pool = Result { try (0..<8).map { _ in try RSAPrivateKey(generating: .bits2048) } }

    static func key(_ index: Int) throws -> RSAPrivateKey {
        let keys = try pool.get()
        return keys[index % keys.count]
    }
}

/// Thrown when a test cannot go on (it has already recorded why).
struct TestStop: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Collects a client's events on a background task.
final class EventRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var recorded: [ClientEvent] = []   // guarded by lock
    private var task: Task<Void, Never>?

    init(_ client: ParleyClient) {
        let stream = client.events
        task = Task { [weak self] in
            for await event in stream { self?.append(event) }
        }
    }

    deinit { task?.cancel() }

    private func append(_ event: ClientEvent) {
        lock.withLock { recorded.append(event) }
    }

    var events: [ClientEvent] { lock.withLock { recorded } }

    func messages(in channelID: ID) -> [DecryptedMessage] {
        events.compactMap { event in
            if case .message(let message) = event, message.channelID == channelID { return message }
            return nil
        }
    }

    var alerts: [SecurityAlert] {
        events.compactMap { event in
            if case .securityAlert(let alert) = event { return alert }
            return nil
        }
    }

    /// Waits (polling, bounded) until `condition` holds; false on timeout.
    func wait(timeout: Double = 15, until condition: (EventRecorder) -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition(self) { return true }
            try? await Task.sleep(nanoseconds: 20_000_000)
        }
        return condition(self)
    }
}

/// A relay on a fresh database (more nodes on the same database with `addNode`), and
/// signed-up SDK clients of it.
final class RelayHarness: @unchecked Sendable {
    let relay: Relay
    let connectionString: String
    private let configuration: RelayConfiguration
    /// Every node, `relay` first.
    private(set) var nodes: [Relay]
    private var clients: [ParleyClient] = []

    init(keyTTLSeconds: Int? = nil) throws {
        connectionString = try TestDatabase.makeDatabase()
        var configuration = RelayConfiguration()
        configuration.port = 0
        configuration.rateLimits.enabled = false
        if let keyTTLSeconds { configuration.keyTTLSeconds = keyTTLSeconds }
        self.configuration = configuration
        relay = Relay(configuration: configuration, connectionString: connectionString)
        try relay.start()
        nodes = [relay]
    }

    /// Starts another relay node on the same database; returns its index in `nodes`.
    func addNode() throws -> Int {
        let node = Relay(configuration: configuration, connectionString: connectionString)
        try node.start()
        nodes.append(node)
        return nodes.count - 1
    }

    var url: URL { url(node: 0) }

    func url(node: Int) -> URL { URL(string: "ws://127.0.0.1:\(nodes[node].port)/ws")! }

    func client(node: Int = 0, configuration: ClientConfiguration = RelayHarness.fastConfiguration) -> ParleyClient {
        let client = ParleyClient(url: url(node: node), configuration: configuration)
        clients.append(client)
        return client
    }

    static var fastConfiguration: ClientConfiguration {
        var configuration = ClientConfiguration()
        configuration.reconnect.initialDelay = 0.05
        configuration.reconnect.maxDelay = 0.5
        return configuration
    }

    /// A new account on a new client, its events recorded from the start.
    func user(_ name: String, key index: Int, node: Int = 0,
              configuration: ClientConfiguration = RelayHarness.fastConfiguration)
        async throws -> (client: ParleyClient, identity: Identity, events: EventRecorder)
    {
        let client = client(node: node, configuration: configuration)
        let events = EventRecorder(client)
        let username = "\(name)_\(UInt32.random(in: 0...UInt32.max))"
        let identity = try await client.signup(username: username, key: TestKeys.key(index))
        return (client, identity, events)
    }

    /// Direct SQL on the relay's database (to play a compromised relay).
    func sql(_ text: String, _ parameters: [SQLValue] = []) throws -> QueryResult {
        try PostgresConnection(connectionString: connectionString).execute(text, parameters)
    }

    func stop() async {
        for client in clients { await client.close() }
        for node in nodes { node.stop() }
    }
}

extension SQLValue {
    static func id(_ id: ID) -> SQLValue { .text(id.string) }
}
