import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// `PostgresConnection`, `SQLValue` and `Row`: values travel as bind parameters and come
/// back as they went in; mismatches, syntax errors and transactions behave as documented.
final class ConnectionTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func connect() throws -> PostgresConnection {
        try PostgresConnection(connectionString: Self.database.get())
    }

    // MARK: - Bind parameters and typed rows

    func testTextRoundTripsUnchanged() throws {
        let connection = try connect()
        let samples = [
            "plain",
            "it's a 'quoted' \"string\"",
            #"back\slash \\ and \x41 and \0"#,
            "'; DROP TABLE users; --",
            "Robert'); DROP TABLE users;--",
            "👋🏽 café ñ 中文 🇸🇪",
            "line\nbreak\ttab\r",
            "$1 $2 %s ?",
            "",
        ]
        for sample in samples {
            let row = try XCTUnwrap(connection.execute(
                "SELECT $1::text, char_length($1::text), octet_length($1::text), $1::text = ''", [.text(sample)]
            ).first)
            XCTAssertEqual(try row.string(0), sample)
            XCTAssertEqual(try row.int(1), sample.unicodeScalars.count, sample)
            XCTAssertEqual(try row.int(2), sample.utf8.count, sample)
            XCTAssertEqual(try row.bool(3), sample.isEmpty, sample)
            XCTAssertFalse(try row.isNull(0), "the empty string is not NULL")
        }
        // Stored and read back from a table, then the table the injection names still exists.
        try connection.executeScript("CREATE TEMP TABLE texts (n int PRIMARY KEY, value text)")
        for (index, sample) in samples.enumerated() {
            try connection.execute("INSERT INTO texts (n, value) VALUES ($1, $2)", [.int(index), .text(sample)])
        }
        let stored = try connection.execute("SELECT value FROM texts ORDER BY n").rows.map { try $0.string(0) }
        XCTAssertEqual(stored, samples)
        XCTAssertEqual(try connection.execute("SELECT to_regclass('users') IS NOT NULL").first?.bool(0), true)
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM texts WHERE value = $1", ["'; DROP TABLE users; --"])
            .first?.int(0), 1)
    }

    func testTextWithNULIsRefusedNotTruncated() throws {
        let connection = try connect()
        // libpq would cut a C string at the NUL, so "alice\0x" would match "alice".
        XCTAssertThrowsError(try connection.execute("SELECT $1::text", [.text("alice\u{0}x")])) { error in
            XCTAssertEqual((error as? StoreError)?.sqlState, "22021")
        }
        XCTAssertEqual(try connection.execute("SELECT $1::text", [.text("alice")]).first?.string(0), "alice")
    }

    func testEveryByteValueRoundTripsAsBytea() throws {
        let connection = try connect()
        let all = (0...255).map { UInt8($0) }
        let row = try XCTUnwrap(connection.execute(
            "SELECT $1::bytea, length($1::bytea), get_byte($1::bytea, 0), get_byte($1::bytea, 255), encode($1::bytea, 'hex')",
            [.bytes(all)]
        ).first)
        XCTAssertEqual(try row.bytes(0), all)
        XCTAssertEqual(try row.int(1), 256)
        XCTAssertEqual(try row.int(2), 0)
        XCTAssertEqual(try row.int(3), 255)
        XCTAssertEqual(try row.string(4), all.map { String(format: "%02x", $0) }.joined())

        // Reversed, stored in a table, read back.
        try connection.executeScript("CREATE TEMP TABLE blobs (n int PRIMARY KEY, value bytea)")
        try connection.execute("INSERT INTO blobs VALUES (1, $1), (2, $2)", [.bytes(all.reversed()), .bytes([])])
        let rows = try connection.execute("SELECT value, length(value) FROM blobs ORDER BY n").rows
        XCTAssertEqual(rows.count, 2)
        XCTAssertEqual(try rows[0].bytes(0), all.reversed())
        XCTAssertEqual(try rows[1].bytes(0), [])
        XCTAssertEqual(try rows[1].int(1), 0)
        XCTAssertFalse(try rows[1].isNull(0), "an empty bytea is not NULL")
        XCTAssertEqual(try rows[1].optionalBytes(0), [])
    }

    func testEmptyByteaIsEmptyNotNull() throws {
        let connection = try connect()
        let row = try XCTUnwrap(connection.execute(
            "SELECT $1::bytea, $1::bytea IS NULL, length($1::bytea)", [.bytes([])]
        ).first)
        XCTAssertEqual(try row.bytes(0), [])
        XCTAssertEqual(try row.bool(1), false)
        XCTAssertEqual(try row.int(2), 0)
    }

    func testIntegerExtremesAndBooleans() throws {
        let connection = try connect()
        for value in [Int64.min, Int64.min + 1, -1, 0, 1, Int64.max - 1, Int64.max] {
            let row = try XCTUnwrap(connection.execute(
                "SELECT $1::bigint, $1::bigint::text", [.integer(value)]
            ).first)
            XCTAssertEqual(try row.int64(0), value)
            XCTAssertEqual(try row.optionalInt64(0), value)
            XCTAssertEqual(try row.string(1), String(value))
        }
        let extremes = try XCTUnwrap(connection.execute(
            "SELECT $1::bigint = -9223372036854775808, $2::bigint = 9223372036854775807",
            [.integer(.min), .integer(.max)]
        ).first)
        XCTAssertTrue(try extremes.bool(0))
        XCTAssertTrue(try extremes.bool(1))
        XCTAssertEqual(try connection.execute("SELECT $1::int + 1", [.int(41)]).first?.int(0), 42)

        for flag in [true, false] {
            let row = try XCTUnwrap(connection.execute(
                "SELECT $1::boolean, NOT $1::boolean, $1::boolean::text", [.boolean(flag)]
            ).first)
            XCTAssertEqual(try row.bool(0), flag)
            XCTAssertEqual(try row.bool(1), !flag)
            XCTAssertEqual(try row.string(2), flag ? "true" : "false")
        }
    }

    func testNullAndOptionalAccessors() throws {
        let connection = try connect()
        let missing: UUID? = nil
        let row = try XCTUnwrap(connection.execute(
            "SELECT $1::text, $2::bigint, $3::uuid, $4::bytea, $1::text IS NULL, $5::text",
            [.null, nil, .uuid(missing), .null, "present"]
        ).first)
        for column in 0..<4 {
            XCTAssertTrue(try row.isNull(column), "column \(column)")
        }
        XCTAssertNil(try row.optionalString(0))
        XCTAssertNil(try row.optionalInt64(1))
        XCTAssertNil(try row.optionalUUID(2))
        XCTAssertNil(try row.optionalBytes(3))
        XCTAssertTrue(try row.bool(4), "the server saw a NULL, not a string")
        XCTAssertFalse(try row.isNull(5))
        XCTAssertEqual(try row.optionalString(5), "present")

        // The non-optional accessors refuse a NULL.
        XCTAssertEqual(storeError { try row.string(0) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.int64(1) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.uuid(2) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.bytes(3) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.bool(0) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.uuidArray(0) }?.code, .decodingFailed)
    }

    func testUUIDRoundTrip() throws {
        let connection = try connect()
        let id = UUID()
        let row = try XCTUnwrap(connection.execute("SELECT $1::uuid, $1::uuid::text", [.uuid(id)]).first)
        XCTAssertEqual(try row.uuid(0), id)
        XCTAssertEqual(try row.optionalUUID(0), id)
        XCTAssertEqual(try row.string(1), id.uuidString.lowercased())
    }

    func testUUIDArrayRoundTrip() throws {
        let connection = try connect()
        let ids = (0..<5).map { _ in UUID() }
        let row = try XCTUnwrap(connection.execute(
            "SELECT $1::uuid[], array_length($1::uuid[], 1), ($1::uuid[])[3]", [.uuidArray(ids)]
        ).first)
        XCTAssertEqual(try row.uuidArray(0), ids)
        XCTAssertEqual(try row.int(1), ids.count)
        XCTAssertEqual(try row.uuid(2), ids[2])

        let single = UUID()
        XCTAssertEqual(try connection.execute("SELECT $1::uuid[]", [.uuidArray([single])]).first?.uuidArray(0), [single])

        let empty = try XCTUnwrap(connection.execute(
            "SELECT $1::uuid[], cardinality($1::uuid[])", [.uuidArray([])]
        ).first)
        XCTAssertEqual(try empty.uuidArray(0), [])
        XCTAssertEqual(try empty.int(1), 0)
    }

    func testTextArrayElementsKeepQuotesCommasAndBackslashes() throws {
        let connection = try connect()
        let elements = [
            "plain", #"with "quotes""#, "a,b,c", #"back\slash"#, #"\"#, "{braces}", "NULL", "null",
            " spaced ", "", "'; DROP TABLE users; --", "👋🏽",
        ]
        let count = try XCTUnwrap(connection.execute(
            "SELECT array_length($1::text[], 1)", [.array(elements)]
        ).first).int(0)
        XCTAssertEqual(count, elements.count)
        let rows = try connection.execute(
            "SELECT value, value IS NULL FROM unnest($1::text[]) WITH ORDINALITY AS u(value, n) ORDER BY n",
            [.array(elements)]
        ).rows
        XCTAssertEqual(try rows.map { try $0.string(0) }, elements)
        XCTAssertEqual(try rows.map { try $0.bool(1) }, Array(repeating: false, count: elements.count),
                       "a quoted NULL is the string NULL")
        XCTAssertEqual(try connection.execute("SELECT cardinality($1::text[])", [.array([])]).first?.int(0), 0)
    }

    func testTypeMismatchThrowsDecodingFailed() throws {
        let connection = try connect()
        let row = try XCTUnwrap(connection.execute(
            "SELECT $1::text, 'not-a-uuid'::text, 1.5::float8, 'yes'::text", ["hello"]
        ).first)
        XCTAssertEqual(try row.string(0), "hello")
        XCTAssertEqual(storeError { try row.int64(0) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.int(0) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.bytes(0) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.uuid(1) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.int64(2) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.bool(3) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.uuidArray(0) }?.code, .decodingFailed)
        // No such column.
        XCTAssertEqual(storeError { try row.string(4) }?.code, .decodingFailed)
        XCTAssertEqual(storeError { try row.isNull(-1) }?.code, .decodingFailed)

        let result = try connection.execute("SELECT 1 AS one, 2 AS two")
        XCTAssertEqual(result.columnCount, 2)
        XCTAssertEqual(result.columnIndex("two"), 1)
        XCTAssertNil(result.columnIndex("three"))
    }

    func testPreparedStatementIsPreparedOnceAndReused() throws {
        let connection = try connect()
        let statement = PreparedStatement("test_reuse_\(Fixture.hex())", "SELECT $1::bigint * 2, $2::text || '!'")
        for index in 0..<100 {
            let row = try XCTUnwrap(connection.execute(statement, [.int(index), .text("n\(index)")]).first)
            XCTAssertEqual(try row.int(0), index * 2)
            XCTAssertEqual(try row.string(1), "n\(index)!")
        }
        let prepared = try XCTUnwrap(connection.execute(
            "SELECT count(*), min(statement) FROM pg_prepared_statements WHERE name = $1", [.text(statement.name)]
        ).first)
        XCTAssertEqual(try prepared.int(0), 1)
        XCTAssertTrue(try prepared.string(1).contains("$1::bigint * 2"))

        // Another connection prepares its own copy on first use.
        let other = try connect()
        XCTAssertEqual(try other.execute("SELECT count(*) FROM pg_prepared_statements WHERE name = $1",
                                         [.text(statement.name)]).first?.int(0), 0)
        XCTAssertEqual(try other.execute(statement, [7, "x"]).first?.int(0), 14)
    }

    func testAffectedRowsCountsTouchedRows() throws {
        let connection = try connect()
        try connection.executeScript("CREATE TEMP TABLE counted (n int)")
        XCTAssertEqual(try connection.execute("INSERT INTO counted SELECT generate_series(1, $1::int)", [5]).affectedRows, 5)
        XCTAssertEqual(try connection.execute("UPDATE counted SET n = n + 1 WHERE n > $1", [3]).affectedRows, 2)
        XCTAssertEqual(try connection.execute("DELETE FROM counted WHERE n > $1", [100]).affectedRows, 0)
        XCTAssertEqual(try connection.execute("SELECT n FROM counted ORDER BY n").rows.map { try $0.int(0) },
                       [1, 2, 3, 5, 6])
    }

    func testSyntaxErrorThrowsQueryFailedAndConnectionStillWorks() throws {
        let connection = try connect()
        let error = try XCTUnwrap(storeError { try connection.execute("SELEC 1") })
        XCTAssertEqual(error.code, .queryFailed)
        XCTAssertEqual(error.sqlState, "42601")
        XCTAssertFalse(error.isTransient)

        let scriptError = try XCTUnwrap(storeError { try connection.executeScript("SELECT 1; SELEC 2") })
        XCTAssertEqual(scriptError.sqlState, "42601")

        let preparedError = try XCTUnwrap(storeError {
            try connection.execute(PreparedStatement("test_bad_\(Fixture.hex())", "SELEC $1"), [1])
        })
        XCTAssertEqual(preparedError.sqlState, "42601")

        XCTAssertTrue(connection.isConnected)
        XCTAssertEqual(try connection.execute("SELECT $1::int + 1", [1]).first?.int(0), 2)
        XCTAssertGreaterThanOrEqual(connection.serverVersion, 150000)
    }

    // MARK: - Transactions

    func testTransactionCommitsWhenTheBodyReturns() throws {
        let connection = try connect()
        let observer = try connect()
        let user = Fixture.userRow()
        let value = try connection.transaction { () throws -> String in
            try Queries.insertUser(user, passkeyHash: Fixture.bytes(32), on: connection)
            // Not visible to another connection before the commit.
            XCTAssertNil(try Queries.user(id: user.id, on: observer))
            return "done"
        }
        XCTAssertEqual(value, "done")
        XCTAssertEqual(try Queries.user(id: user.id, on: observer)?.username, user.username)
    }

    func testTransactionRollsBackWhenTheBodyThrows() throws {
        let connection = try connect()
        let observer = try connect()
        let user = Fixture.userRow()
        XCTAssertThrowsError(try connection.transaction {
            try Queries.insertUser(user, passkeyHash: Fixture.bytes(32), on: connection)
            XCTAssertNotNil(try Queries.user(id: user.id, on: connection), "visible inside its transaction")
            throw DeliberateRollback()
        }) { error in
            XCTAssertEqual(error as? DeliberateRollback, DeliberateRollback(), "the body's error comes out unchanged")
        }
        XCTAssertNil(try Queries.user(id: user.id, on: observer))
        XCTAssertNil(try Queries.user(id: user.id, on: connection))
        // The connection is out of the transaction: this insert commits on its own.
        let later = try Fixture.user(on: connection)
        XCTAssertNotNil(try Queries.user(id: later.id, on: observer))
    }

    /// A body that swallows a failed statement leaves the transaction aborted; PostgreSQL
    /// then answers COMMIT with a rollback. `transaction` must not report that as success.
    func testTransactionWhoseStatementFailedDoesNotReturnAsCommitted() throws {
        let connection = try connect()
        let observer = try connect()
        let taken = try Fixture.user(on: connection)
        let user = Fixture.userRow()
        let outcome = Result {
            try connection.transaction {
                try Queries.insertUser(user, passkeyHash: Fixture.bytes(32), on: connection)
                let duplicate = storeError { try Fixture.user(named: taken.username, on: connection) }
                XCTAssertEqual(duplicate?.isUniqueViolation, true)
            }
        }
        let stored = try Queries.user(id: user.id, on: observer) != nil
        if case .success = outcome {
            XCTAssertTrue(stored, "transaction returned as committed, but its insert was rolled back")
        }
        XCTAssertFalse(stored)
        XCTAssertThrowsError(try outcome.get()) { error in
            XCTAssertNotNil(error as? StoreError, "\(error)")
        }
        // The connection is usable and out of the failed transaction afterwards.
        let next = Fixture.userRow()
        _ = try connection.transaction { try Queries.insertUser(next, passkeyHash: Fixture.bytes(32), on: connection) }
        XCTAssertNotNil(try Queries.user(id: next.id, on: observer))
    }

    // MARK: - Error text

    func testErrorDescriptionKeepsRowValuesOut() throws {
        let connection = try connect()
        try Fixture.user(named: "secretname", on: connection)
        let error = try XCTUnwrap(storeError { try Fixture.user(named: "secretname", on: connection) })
        XCTAssertTrue(error.isUniqueViolation)
        XCTAssertFalse(error.description.contains("secretname"), error.description)
        XCTAssertFalse("\(error)".contains("secretname"), "\(error)")
        XCTAssertTrue(error.description.contains("23505"), error.description)
        XCTAssertTrue(error.debugDescription.contains("secretname"), error.debugDescription)
        XCTAssertTrue(error.debugDescription.contains("users_username_key"), error.debugDescription)
    }
}
