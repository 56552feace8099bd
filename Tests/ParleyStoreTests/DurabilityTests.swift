import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// The relay refuses a PostgreSQL that may lose commits it already acknowledged.
final class DurabilityTests: XCTestCase {
    func testDefaultSettingsAreAccepted() throws {
        var configuration = DatabaseConfiguration()
        configuration.url = try TestDatabase.makeDatabase(migrated: false)
        let database = try Database(configuration: configuration)
        XCTAssertNoThrow(try database.requireDurableCommits())
    }

    func testSynchronousCommitOffIsRefused() throws {
        var configuration = DatabaseConfiguration()
        // libpq's `options` sets the server parameter for this session only.
        configuration.url = try TestDatabase.makeDatabase(migrated: false) + " options='-c synchronous_commit=off'"
        let database = try Database(configuration: configuration)
        XCTAssertThrowsError(try database.requireDurableCommits()) { error in
            XCTAssertEqual((error as? StoreError)?.code, .unsafeServerSettings)
            XCTAssertTrue((error as? StoreError)?.detail.contains("synchronous_commit = off") == true)
        }
    }
}
