import Foundation

/// A small blocking pool of `PostgresConnection`s for worker threads.
///
/// Thread-safe: every field is guarded by `condition`. Connections are opened lazily up
/// to `maximumConnections`; a caller waits when all are in use. A connection that comes
/// back broken is reconnected on its next checkout, so a database restart heals itself.
public final class ConnectionPool: @unchecked Sendable {
    public let connectionString: String
    public let maximumConnections: Int
    public let applicationName: String

    private let condition = NSCondition()
    private var idle: [PostgresConnection] = []   // guarded by condition
    private var openCount = 0                     // guarded by condition
    private var closed = false                    // guarded by condition

    public init(connectionString: String, maximumConnections: Int = 4, applicationName: String = "parley") {
        precondition(maximumConnections > 0, "a pool needs at least one connection")
        self.connectionString = connectionString
        self.maximumConnections = maximumConnections
        self.applicationName = applicationName
    }

    /// Lends a connection to `body` and takes it back afterwards, even when `body` throws.
    public func withConnection<T>(_ body: (PostgresConnection) throws -> T) throws -> T {
        let connection = try checkOut()
        defer { checkIn(connection) }
        return try body(connection)
    }

    /// Closes the idle connections and makes waiting and future callers fail.
    public func close() {
        condition.lock()
        closed = true
        let dropped = idle
        idle.removeAll()
        openCount -= dropped.count
        condition.broadcast()
        condition.unlock()
        _ = dropped   // released here, outside the lock
    }

    private func checkOut() throws -> PostgresConnection {
        condition.lock()
        while true {
            if closed {
                condition.unlock()
                throw StoreError(.poolClosed, detail: "the connection pool is closed")
            }
            if let connection = idle.popLast() {
                condition.unlock()
                if !connection.isConnected {
                    do {
                        try connection.reconnect()
                    } catch {
                        discard()
                        throw error
                    }
                }
                return connection
            }
            if openCount < maximumConnections {
                openCount += 1
                condition.unlock()
                do {
                    return try PostgresConnection(connectionString: connectionString, applicationName: applicationName)
                } catch {
                    discard()
                    throw error
                }
            }
            condition.wait()
        }
    }

    private func checkIn(_ connection: PostgresConnection) {
        condition.lock()
        if closed {
            openCount -= 1
        } else {
            idle.append(connection)
        }
        condition.signal()
        condition.unlock()
    }

    /// Forgets a connection that could not be (re)opened, making room for a new one.
    private func discard() {
        condition.lock()
        openCount -= 1
        condition.signal()
        condition.unlock()
    }
}
