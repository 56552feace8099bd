import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// Thrown inside a transaction to make it roll back on purpose.
struct DeliberateRollback: Error, Equatable {}


/// The `StoreError` that `body` throws; fails the test when it returns or throws
/// something else.
@discardableResult
func storeError<T>(
    _ message: String = "",
    file: StaticString = #filePath,
    line: UInt = #line,
    _ body: () throws -> T
) -> StoreError? {
    do {
        let value = try body()
        XCTFail("expected a StoreError, got the value \(value) \(message)", file: file, line: line)
    } catch let error as StoreError {
        return error
    } catch {
        XCTFail("expected a StoreError, got \(error) \(message)", file: file, line: line)
    }
    return nil
}

/// Rows for the schema tests: unique names and ids each time, so tests never collide.
enum Fixture {
    static func bytes(_ count: Int) -> [UInt8] {
        (0..<count).map { _ in UInt8.random(in: 0...255) }
    }

    /// 12 bytes no other call returns (a UUID's random bits).
    static func iv() -> [UInt8] {
        let id = UUID().uuid
        return withUnsafeBytes(of: id) { Array($0.prefix(12)) }
    }

    static func hex() -> String {
        UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    }

    /// A name that passes the schema's `^[a-z0-9_.-]{3,32}$`.
    static func username() -> String {
        "u_" + hex().prefix(24)
    }

    static func userRow(named username: String = Fixture.username()) -> UserRow {
        UserRow(id: UUID(), username: username, publicKey: bytes(294), keyFingerprint: bytes(32))
    }

    @discardableResult
    static func user(named username: String = Fixture.username(), on connection: PostgresConnection) throws -> UserRow {
        try Queries.insertUser(userRow(named: username), passkeyHash: bytes(32), on: connection)
    }

    static func channel(owner: UUID, on connection: PostgresConnection) throws -> UUID {
        let id = UUID()
        try connection.execute(
            "INSERT INTO channels (id, name, owner_id, membership_version) VALUES ($1, $2, $3, 1)",
            [.uuid(id), .text("channel \(hex().prefix(8))"), .uuid(owner)]
        )
        return id
    }

    @discardableResult
    static func key(channel: UUID, creator: UUID, previous: UUID?, id: UUID = UUID(),
                    on connection: PostgresConnection) throws -> UUID {
        try connection.execute("""
            INSERT INTO channel_keys (id, channel_id, creator_id, previous_key_id, membership_version, digest, sig, expires_at)
            VALUES ($1, $2, $3, $4, 1, $5, $6, now() + interval '1 day')
            """, [.uuid(id), .uuid(channel), .uuid(creator), .uuid(previous), .bytes(bytes(32)), .bytes(bytes(256))])
        return id
    }

    static func message(channel: UUID, sender: UUID, key: UUID, clientMessageID: UUID = UUID(),
                        iv: [UInt8] = Fixture.iv()) -> MessageRow {
        MessageRow(channelID: channel, senderID: sender, clientMessageID: clientMessageID, keyID: key,
                   iv: iv, ciphertext: bytes(48), ts: Int64(Date().timeIntervalSince1970))
    }
}

/// Unix milliseconds now, to check that server times are plausible.
func nowMilliseconds() -> Int64 {
    Int64(Date().timeIntervalSince1970 * 1000)
}

/// Asserts that a unix-milliseconds value is within a minute of `expected`.
func assertPlausibleMilliseconds(_ value: Int64, near expected: Int64 = nowMilliseconds(),
                                 file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertLessThan(abs(value - expected), 60_000, "\(value) is not within a minute of \(expected)",
                      file: file, line: line)
}
