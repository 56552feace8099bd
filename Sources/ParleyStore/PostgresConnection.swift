import CLibPQ
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// One libpq connection: bind parameters only, statements prepared once per connection,
/// SQLSTATE-aware errors, and reconnection after the server went away.
///
/// Not thread-safe and not `Sendable`: one thread uses it at a time (a worker thread of
/// the relay, or whoever holds it from a `ConnectionPool`). Owns its `PGconn` and closes
/// it in `deinit`.
public final class PostgresConnection {
    public let connectionString: String
    public let applicationName: String
    private var handle: OpaquePointer?
    private var preparedNames: Set<String> = []
    /// Counts the connections made: a session-level state such as `LISTEN` belongs to one
    /// of them, and a query that reconnected on the way has lost it.
    public private(set) var generation = 0

    /// Connects at once; throws `connectionFailed` when the server cannot be reached.
    public init(connectionString: String, applicationName: String = "parley") throws {
        self.connectionString = connectionString
        self.applicationName = applicationName
        try connect()
    }

    deinit {
        if let handle { PQfinish(handle) }
    }

    /// True while the connection is usable as far as libpq knows (without a round trip).
    public var isConnected: Bool {
        guard let handle else { return false }
        return PQstatus(handle) == CONNECTION_OK
    }

    /// The server's version number, e.g. 150018 for 15.18.
    public var serverVersion: Int {
        guard let handle else { return 0 }
        return Int(PQserverVersion(handle))
    }

    /// Drops the current connection (if any) and opens a new one. Prepared statements are
    /// per connection, so they are prepared again on first use.
    public func reconnect() throws {
        if let handle { PQfinish(handle) }
        handle = nil
        preparedNames.removeAll()
        try connect()
    }

    /// Runs one statement with bind parameters (extended protocol, unnamed statement).
    @discardableResult
    public func execute(_ sql: String, _ parameters: [SQLValue] = []) throws -> QueryResult {
        let connection = try liveHandle()
        return try withParameters(parameters) { values, lengths, formats in
            try check(PQexecParams(connection, sql, Int32(parameters.count), nil, values, lengths, formats, 0))
        }
    }

    /// Runs a prepared statement, preparing it on this connection the first time.
    @discardableResult
    public func execute(_ statement: PreparedStatement, _ parameters: [SQLValue] = []) throws -> QueryResult {
        let connection = try liveHandle()
        if !preparedNames.contains(statement.name) {
            _ = try check(PQprepare(connection, statement.name, statement.sql, Int32(parameters.count), nil))
            preparedNames.insert(statement.name)
        }
        return try withParameters(parameters) { values, lengths, formats in
            try check(PQexecPrepared(connection, statement.name, Int32(parameters.count), values, lengths, formats, 0))
        }
    }

    /// Runs a script of several statements without parameters (simple protocol), such as
    /// a migration file. Never pass text that came from a client.
    public func executeScript(_ sql: String) throws {
        let connection = try liveHandle()
        _ = try check(PQexec(connection, sql))
    }

    /// Runs `body` in a transaction: COMMIT when it returns, ROLLBACK when it throws.
    /// The commit is part of the call: when it returns, the work is durable.
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try executeScript("BEGIN")
        let value: T
        do {
            value = try body()
        } catch {
            if isConnected { try? executeScript("ROLLBACK") }
            throw error
        }
        // A statement failed and the body caught it: PostgreSQL would answer COMMIT with a
        // silent rollback, so say so instead of returning as if the work were durable.
        if let handle, PQtransactionStatus(handle) == PQTRANS_INERROR {
            try? executeScript("ROLLBACK")
            throw StoreError(.queryFailed, sqlState: "25P02", detail: "a statement of the transaction failed; it was rolled back")
        }
        try executeScript("COMMIT")
        return value
    }

    // MARK: - Notifications

    /// One `NOTIFY` received: the channel, the payload and the sending backend's pid.
    public struct Notification: Sendable, Equatable {
        public var channel: String
        public var payload: String
        public var pid: Int32
    }

    /// `LISTEN` on a channel: lower-case letters, digits and `_`, as PostgreSQL folds an
    /// unquoted identifier (an upper-case name would be listened to in lower case).
    public func listen(_ channel: String) throws {
        guard let first = channel.first, !first.isNumber,
              channel.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_" }) else {
            throw StoreError(.queryFailed, detail: "not a channel name")
        }
        try execute("LISTEN \(channel)")
    }

    /// Waits up to `timeout` seconds for notifications and returns what arrived (maybe
    /// nothing). Throws `connectionFailed` when the connection is lost: a lost LISTEN
    /// connection is not reconnected here, since the caller must LISTEN again and catch up.
    public func notifications(timeout: Double) throws -> [Notification] {
        guard let handle, PQstatus(handle) == CONNECTION_OK else {
            throw StoreError(.connectionFailed, detail: "no connection")
        }
        var received = takeNotifications(handle)
        if !received.isEmpty { return received }
        var descriptor = pollfd(fd: PQsocket(handle), events: Int16(POLLIN), revents: 0)
        let milliseconds = timeout.isFinite ? Int32(min(max(0, timeout), 3600) * 1000) : 3_600_000
        let ready = poll(&descriptor, 1, milliseconds)
        if ready < 0 && errno != EINTR {
            throw StoreError(.connectionFailed, detail: "poll failed: errno \(errno)")
        }
        if ready > 0 {
            guard PQconsumeInput(handle) == 1, PQstatus(handle) == CONNECTION_OK else {
                let message = String(cString: PQerrorMessage(handle)).trimmingCharacters(in: .whitespacesAndNewlines)
                throw StoreError(.connectionFailed, detail: message.isEmpty ? "connection lost" : message)
            }
            received = takeNotifications(handle)
        }
        return received
    }

    private func takeNotifications(_ handle: OpaquePointer) -> [Notification] {
        var received: [Notification] = []
        while let notify = PQnotifies(handle) {
            received.append(Notification(channel: String(cString: notify.pointee.relname),
                                         payload: String(cString: notify.pointee.extra),
                                         pid: notify.pointee.be_pid))
            PQfreemem(notify)
        }
        return received
    }

    // MARK: - libpq plumbing

    private func connect() throws {
        // application_name comes before dbname so a URL's own setting wins.
        let keywords = ["application_name", "connect_timeout", "dbname"]
        let values = [applicationName, "5", connectionString]
        let connection = withCStringArray(keywords) { keywordPointers in
            withCStringArray(values) { valuePointers in
                PQconnectdbParams(keywordPointers, valuePointers, 1)
            }
        }
        guard let connection else {
            throw StoreError(.connectionFailed, detail: "libpq could not allocate a connection")
        }
        guard PQstatus(connection) == CONNECTION_OK else {
            let message = String(cString: PQerrorMessage(connection))
            PQfinish(connection)
            throw StoreError(.connectionFailed, detail: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        // Notices ("relation already exists, skipping") are not errors; keep them off stderr.
        PQsetNoticeProcessor(connection, { _, _ in }, nil)
        handle = connection
        generation += 1
    }

    private func liveHandle() throws -> OpaquePointer {
        if let handle, PQstatus(handle) == CONNECTION_OK { return handle }
        try reconnect()
        guard let handle else {
            throw StoreError(.connectionFailed, detail: "no connection")
        }
        return handle
    }

    /// Turns a PGresult into a `QueryResult`, or throws with the SQLSTATE when it failed.
    private func check(_ result: OpaquePointer?) throws -> QueryResult {
        guard let result else {
            let message = handle.map { String(cString: PQerrorMessage($0)) } ?? "no connection"
            throw StoreError(.connectionFailed, detail: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        switch PQresultStatus(result) {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY, PGRES_SINGLE_TUPLE:
            return QueryResult(taking: result)
        default:
            let sqlState = Self.field(result, "C")
            let constraint = Self.field(result, "n")
            let message = String(cString: PQresultErrorMessage(result)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQclear(result)
            let broken = handle.map { PQstatus($0) != CONNECTION_OK } ?? true
            let lostConnection = broken && (sqlState.map { $0.hasPrefix("08") } ?? true)
            let code: StoreError.Code = lostConnection ? .connectionFailed : .queryFailed
            throw StoreError(code, sqlState: sqlState, constraint: constraint, detail: message)
        }
    }

    /// An error field of a failed result; `code` is the PG_DIAG_* letter.
    private static func field(_ result: OpaquePointer, _ code: Character) -> String? {
        guard let ascii = code.asciiValue, let pointer = PQresultErrorField(result, Int32(ascii)) else { return nil }
        return String(cString: pointer)
    }

    /// Lays the parameters out as libpq wants them: value pointers, lengths, formats.
    private func withParameters<T>(
        _ parameters: [SQLValue],
        _ body: (UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<Int32>?, UnsafePointer<Int32>?) throws -> T
    ) throws -> T {
        if parameters.isEmpty { return try body(nil, nil, nil) }
        let wires = try parameters.map { try $0.wire() }
        let buffers: [UnsafeMutableBufferPointer<UInt8>?] = wires.map { wire in
            guard let bytes = wire.bytes else { return nil }
            let buffer = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: max(bytes.count, 1))
            _ = buffer.initialize(from: bytes)
            return buffer
        }
        defer { buffers.forEach { $0?.deallocate() } }
        let pointers: [UnsafePointer<CChar>?] = buffers.map { buffer in
            buffer.flatMap { $0.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) } }
        }
        let lengths = wires.map { Int32($0.bytes?.count ?? 0) }
        let formats = wires.map { Int32($0.binary ? 1 : 0) }
        return try pointers.withUnsafeBufferPointer { values in
            try lengths.withUnsafeBufferPointer { lengthPointer in
                try formats.withUnsafeBufferPointer { formatPointer in
                    try body(values.baseAddress, lengthPointer.baseAddress, formatPointer.baseAddress)
                }
            }
        }
    }
}

/// Calls `body` with a NULL-terminated array of C strings that live for the call.
func withCStringArray<T>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> T) -> T {
    let array = UnsafeMutablePointer<UnsafePointer<CChar>?>.allocate(capacity: strings.count + 1)
    let copies = strings.map { strdup($0) }
    defer {
        copies.forEach { free($0) }
        array.deallocate()
    }
    for (index, copy) in copies.enumerated() { array[index] = copy.map { UnsafePointer($0) } }
    array[strings.count] = nil
    return body(array)
}
