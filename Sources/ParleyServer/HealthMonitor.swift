import Foundation
import ParleyStore

/// Pings PostgreSQL once a second on its own thread and connection, so `/healthz` can
/// answer at once from the service thread without touching the database there.
final class HealthMonitor: @unchecked Sendable {
    private let connectionString: String
    private let log: Log
    private let lock = NSLock()
    private var lastSuccess: Date?        // guarded by lock
    private let thread = BackgroundThread(name: "parley-health")

    /// Whether the last check answered (health thread only): changes are logged.
    private var wasUp: Bool?

    init(connectionString: String, log: Log) {
        self.connectionString = connectionString
        self.log = log
    }

    /// True when the database answered within the last three seconds.
    var isDatabaseUp: Bool {
        lock.withLock { lastSuccess.map { Date().timeIntervalSince($0) < 3 } ?? false }
    }

    func start() {
        check(nil)
        thread.start { [self] in
            var connection: PostgresConnection?
            var lastSweep: Date?
            while !thread.isStopping {
                connection = check(connection)
                if let connection, lastSweep.map({ Date().timeIntervalSince($0) >= Housekeeping.interval }) ?? true {
                    lastSweep = Date()
                    sweep(on: connection)
                }
                for _ in 0..<10 where !thread.isStopping { usleep(100_000) }
            }
        }
    }

    func stop() { thread.stop() }

    /// Expired challenges and sessions go (Housekeeping); a failure waits for the next round.
    private func sweep(on connection: PostgresConnection) {
        do {
            let swept = try Housekeeping.sweep(on: connection)
            if swept.challenges + swept.sessions > 0 {
                log.info("housekeeping.swept", "expired challenges and sessions deleted",
                         ["challenges": .int(swept.challenges), "sessions": .int(swept.sessions)])
            }
        } catch {
            log.warn("housekeeping.failed", "the sweep of expired rows failed; next round retries",
                     ["error": .string((error as? StoreError)?.description ?? "unknown")])
        }
    }

    @discardableResult
    private func check(_ existing: PostgresConnection?) -> PostgresConnection? {
        do {
            let connection = try existing ?? PostgresConnection(connectionString: connectionString, applicationName: "parley-health")
            try connection.execute("SELECT 1")
            lock.withLock { lastSuccess = Date() }
            if wasUp == false { log.info("database.up", "the database answers again") }
            wasUp = true
            return connection
        } catch {
            lock.withLock { lastSuccess = nil }
            if wasUp != false {
                log.warn("database.down", "the database does not answer; requests get unavailable",
                         ["error": .string((error as? StoreError)?.description ?? "unknown")])
            }
            wasUp = false
            return nil
        }
    }
}
