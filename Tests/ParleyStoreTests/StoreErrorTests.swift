import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// Integrity violations from the real server come back with their SQLSTATE and the name
/// of the constraint, so callers can tell "name taken" from "no such user".
final class StoreErrorTests: XCTestCase {
    private static let database = Result { try TestDatabase.makeDatabase() }

    private func connect() throws -> PostgresConnection {
        try PostgresConnection(connectionString: Self.database.get())
    }

    func testUniqueViolation() throws {
        let connection = try connect()
        let first = try Fixture.user(on: connection)
        let error = try XCTUnwrap(storeError { try Fixture.user(named: first.username, on: connection) })
        XCTAssertEqual(error.code, .queryFailed)
        XCTAssertEqual(error.sqlState, "23505")
        XCTAssertTrue(error.isUniqueViolation)
        XCTAssertFalse(error.isForeignKeyViolation)
        XCTAssertFalse(error.isCheckViolation)
        XCTAssertFalse(error.isTransient)
        XCTAssertEqual(error.constraint, "users_username_key")
        // The first account is untouched and the only one with that name.
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM users WHERE username = $1",
                                              [.text(first.username)]).first?.int(0), 1)
        XCTAssertEqual(try Queries.user(named: first.username, on: connection)?.id, first.id)
    }

    func testPrimaryKeyViolationNamesThePrimaryKey() throws {
        let connection = try connect()
        let first = try Fixture.user(on: connection)
        var again = Fixture.userRow()
        again.id = first.id
        let error = try XCTUnwrap(storeError { try Queries.insertUser(again, passkeyHash: Fixture.bytes(32), on: connection) })
        XCTAssertTrue(error.isUniqueViolation)
        XCTAssertEqual(error.constraint, "users_pkey")
        XCTAssertNil(try Queries.user(named: again.username, on: connection))
    }

    func testForeignKeyViolation() throws {
        let connection = try connect()
        let nobody = UUID()
        let token = Fixture.bytes(32)
        let error = try XCTUnwrap(storeError {
            try Queries.insertSession(tokenHash: token, userID: nobody, lifetimeSeconds: 60, on: connection)
        })
        XCTAssertEqual(error.code, .queryFailed)
        XCTAssertEqual(error.sqlState, "23503")
        XCTAssertTrue(error.isForeignKeyViolation)
        XCTAssertFalse(error.isUniqueViolation)
        XCTAssertFalse(error.isCheckViolation)
        XCTAssertEqual(error.constraint, "sessions_user_id_fkey")
        XCTAssertNil(try Queries.session(tokenHash: token, on: connection))
        XCTAssertEqual(try connection.execute("SELECT count(*) FROM sessions WHERE token_hash = $1",
                                              [.bytes(token)]).first?.int(0), 0)
    }

    func testCheckViolation() throws {
        let connection = try connect()
        let error = try XCTUnwrap(storeError { try Fixture.user(named: "AB", on: connection) })
        XCTAssertEqual(error.code, .queryFailed)
        XCTAssertEqual(error.sqlState, "23514")
        XCTAssertTrue(error.isCheckViolation)
        XCTAssertFalse(error.isUniqueViolation)
        XCTAssertFalse(error.isForeignKeyViolation)
        XCTAssertEqual(error.constraint, "users_username_check")
        XCTAssertNil(try Queries.user(named: "AB", on: connection))

        // A wrong-sized fingerprint names its own check.
        var user = Fixture.userRow()
        user.keyFingerprint = Fixture.bytes(31)
        let fingerprint = try XCTUnwrap(storeError { try Queries.insertUser(user, passkeyHash: Fixture.bytes(32), on: connection) })
        XCTAssertTrue(fingerprint.isCheckViolation)
        XCTAssertEqual(fingerprint.constraint, "users_key_fingerprint_check")
        XCTAssertNil(try Queries.user(id: user.id, on: connection))
    }

    func testOtherErrorsAreNoneOfTheIntegrityKinds() throws {
        let connection = try connect()
        let error = try XCTUnwrap(storeError { try connection.execute("SELECT * FROM no_such_table_at_all") })
        XCTAssertEqual(error.sqlState, "42P01")
        XCTAssertNil(error.constraint)
        XCTAssertFalse(error.isUniqueViolation || error.isForeignKeyViolation || error.isCheckViolation || error.isTransient)
    }

    func testTransientClassification() {
        XCTAssertTrue(StoreError(.connectionFailed, detail: "gone").isTransient)
        for state in ["08006", "08001", "40001", "40P01", "57P01", "57P02", "57P03", "53300"] {
            XCTAssertTrue(StoreError(.queryFailed, sqlState: state, detail: "").isTransient, state)
        }
        for state in ["23505", "23503", "23514", "42601", "22P02"] {
            XCTAssertFalse(StoreError(.queryFailed, sqlState: state, detail: "").isTransient, state)
        }
        XCTAssertFalse(StoreError(.decodingFailed, detail: "").isTransient)
        XCTAssertEqual(StoreError(.poolClosed, detail: "x").description, "store error pool_closed")
    }
}
