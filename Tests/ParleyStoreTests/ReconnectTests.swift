import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// A connection whose server backend was killed fails once with a transient error, then
/// reconnects by itself on the next query, prepared statements included.
final class ReconnectTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func connect() throws -> PostgresConnection {
        try PostgresConnection(connectionString: Self.database.get())
    }

    private func backendPID(_ connection: PostgresConnection) throws -> Int64 {
        try XCTUnwrap(connection.execute("SELECT pg_backend_pid()").first).int64(0)
    }

    /// Terminates a backend from another connection and waits (up to 10 s) until it is gone.
    private func terminate(_ pid: Int64) throws {
        let killer = try connect()
        let terminated = try XCTUnwrap(killer.execute("SELECT pg_terminate_backend($1::int, 10000)", [.integer(pid)]).first)
        XCTAssertTrue(try terminated.bool(0), "backend \(pid) was not terminated")
        XCTAssertEqual(try killer.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = $1::int", [.integer(pid)])
            .first?.int(0), 0)
    }

    func testQueryAfterTerminatedBackendFailsTransientlyThenReconnects() throws {
        let connection = try connect()
        let statement = PreparedStatement("test_reconnect_\(Fixture.hex())", "SELECT $1::bigint + 1")
        XCTAssertEqual(try connection.execute(statement, [1]).first?.int64(0), 2)
        let pid = try backendPID(connection)

        try terminate(pid)

        let error = try XCTUnwrap(storeError { try connection.execute("SELECT 1") })
        XCTAssertTrue(error.isTransient, error.debugDescription)
        XCTAssertFalse(connection.isConnected, "libpq knows the connection broke")

        // The next query reconnects by itself, to a new backend.
        XCTAssertEqual(try connection.execute("SELECT 41 + 1").first?.int(0), 42)
        XCTAssertTrue(connection.isConnected)
        XCTAssertNotEqual(try backendPID(connection), pid)

        // The prepared statement is prepared again on the new backend, once.
        for value in 0..<5 {
            XCTAssertEqual(try connection.execute(statement, [.integer(Int64(value))]).first?.int64(0), Int64(value) + 1)
        }
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = $1",
                                              [.text(statement.name)]).first?.int(0), 1)
    }

    func testPreparedStatementAfterTerminatedBackendFailsTransientlyThenWorks() throws {
        let connection = try connect()
        let user = try Fixture.user(on: connection)
        // Queries.user(id:) is a prepared statement: prepared on this backend now.
        XCTAssertEqual(try Queries.user(id: user.id, on: connection), user)
        let pid = try backendPID(connection)

        try terminate(pid)

        let error = try XCTUnwrap(storeError { try Queries.user(id: user.id, on: connection) })
        XCTAssertTrue(error.isTransient, error.debugDescription)
        XCTAssertEqual(try Queries.user(id: user.id, on: connection), user)
        XCTAssertEqual(try Queries.user(named: user.username, on: connection), user)
        XCTAssertNotEqual(try backendPID(connection), pid)
    }

    func testExplicitReconnectGivesANewBackend() throws {
        let connection = try connect()
        let statement = PreparedStatement("test_explicit_\(Fixture.hex())", "SELECT $1::text")
        XCTAssertEqual(try connection.execute(statement, ["a"]).first?.string(0), "a")
        let pid = try backendPID(connection)
        try connection.reconnect()
        XCTAssertNotEqual(try backendPID(connection), pid)
        XCTAssertEqual(try connection.execute(statement, ["b"]).first?.string(0), "b")
    }

    func testUnreachableServerThrowsConnectionFailed() throws {
        let error = try XCTUnwrap(storeError {
            try PostgresConnection(connectionString: "host=/tmp/parley-no-such-dir-\(Fixture.hex().prefix(8)) port=5432 dbname=x")
        })
        XCTAssertEqual(error.code, .connectionFailed)
        XCTAssertTrue(error.isTransient)
    }

    func testApplicationNameIsSetAndAURLsOwnSettingWins() throws {
        let name = "reconnect-\(Fixture.hex().prefix(8))"
        let connection = try PostgresConnection(connectionString: Self.database.get(), applicationName: name)
        XCTAssertEqual(try connection.execute("SHOW application_name").first?.string(0), name)
        let own = try PostgresConnection(connectionString: Self.database.get() + " application_name=fromstring",
                                         applicationName: name)
        XCTAssertEqual(try own.execute("SHOW application_name").first?.string(0), "fromstring")
    }
}
