/// The one error type of the store.
///
/// `description` is generic on purpose: PostgreSQL messages can quote the values of a
/// row (a username, a key), so they appear only in `debugDescription`, which callers
/// must not log at info level.
public struct StoreError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// What went wrong, stable enough to switch on. Extensible: new codes may be added.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(_ rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The server could not be reached, or the connection broke mid-query.
        public static let connectionFailed = Code("connection_failed")
        /// The server answered a query with an error (see `sqlState`).
        public static let queryFailed = Code("query_failed")
        /// A row had a value of another shape than the reader asked for.
        public static let decodingFailed = Code("decoding_failed")
        /// A migration file is malformed, missing, or differs from what was applied.
        public static let migrationFailed = Code("migration_failed")
        /// The embedded PostgreSQL could not be set up, started or stopped.
        public static let embeddedServerFailed = Code("embedded_server_failed")
        /// The server runs with settings that break the relay's durability promise.
        public static let unsafeServerSettings = Code("unsafe_server_settings")
        /// The pool was closed while a caller waited for a connection.
        public static let poolClosed = Code("pool_closed")
    }

    public var code: Code
    /// The five-character SQLSTATE when the server sent one.
    public var sqlState: String?
    /// The constraint named by an integrity violation, when the server sent one.
    public var constraint: String?
    /// The server's or the library's own words; may contain row values.
    public var detail: String

    public init(_ code: Code, sqlState: String? = nil, constraint: String? = nil, detail: String) {
        self.code = code
        self.sqlState = sqlState
        self.constraint = constraint
        self.detail = detail
    }

    public var description: String {
        if let sqlState { return "store error \(code) (SQLSTATE \(sqlState))" }
        return "store error \(code)"
    }

    public var debugDescription: String {
        var text = description
        if let constraint { text += " constraint \(constraint)" }
        return text + ": " + detail
    }

    /// 23505: a UNIQUE or PRIMARY KEY constraint refused the row.
    public var isUniqueViolation: Bool { sqlState == "23505" }
    /// 23503: a FOREIGN KEY constraint refused the row.
    public var isForeignKeyViolation: Bool { sqlState == "23503" }
    /// 23514: a CHECK constraint refused the row.
    public var isCheckViolation: Bool { sqlState == "23514" }

    /// True when the same work may succeed if retried later: the connection is gone, the
    /// server is starting or stopping, or the transaction lost a serialization race.
    public var isTransient: Bool {
        if code == .connectionFailed { return true }
        guard let sqlState else { return false }
        if sqlState.hasPrefix("08") { return true }            // connection exception
        switch sqlState {
        case "40001", "40P01":                                 // serialization failure, deadlock
            return true
        case "57P01", "57P02", "57P03":                        // admin/crash shutdown, cannot connect now
            return true
        case "53300":                                          // too many connections
            return true
        default:
            return false
        }
    }
}
