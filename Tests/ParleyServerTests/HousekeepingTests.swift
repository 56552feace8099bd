@testable import ParleyServer
import ParleyStore
import XCTest

/// Expired challenges and sessions are deleted, live ones kept, a batch at a time.
final class HousekeepingTests: XCTestCase {
    func testExpiredChallengesAndSessionsGoLiveOnesStay() throws {
        let fixture = try MessageFixture()
        let user = try fixture.makeUser()
        func session(expiresIn seconds: Int) throws {
            try fixture.db.execute("""
                INSERT INTO sessions (token_hash, user_id, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
                """, [.bytes(randomMessageBytes(32)), .text(user.string), .int(seconds)])
        }
        func challenge(expiresIn seconds: Int) throws {
            try fixture.db.execute("""
                INSERT INTO challenges (id, purpose, user_id, answer_hash, expires_at)
                VALUES (gen_random_uuid(), 'login', $1, $2, now() + make_interval(secs => $3))
                """, [.text(user.string), .bytes(randomMessageBytes(32)), .int(seconds)])
        }
        for _ in 0..<3 { try session(expiresIn: -60) }
        try session(expiresIn: 3600)
        for _ in 0..<2 { try challenge(expiresIn: -1) }
        try challenge(expiresIn: 300)

        let first = try Housekeeping.sweep(on: fixture.db, batch: 2)
        XCTAssertEqual(first.challenges, 2)
        XCTAssertEqual(first.sessions, 2, "at most a batch per statement")
        let second = try Housekeeping.sweep(on: fixture.db, batch: 2)
        XCTAssertEqual(second.challenges, 0)
        XCTAssertEqual(second.sessions, 1)
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM sessions WHERE expires_at > now()", []), 1)
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM sessions", []), 1)
        XCTAssertEqual(try fixture.count("SELECT count(*) FROM challenges", []), 1)
    }
}
