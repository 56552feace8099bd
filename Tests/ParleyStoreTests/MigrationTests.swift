import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// `Migration.load` and `MigrationRunner`: applied once, all or nothing, safe with several
/// runners at once, and an applied file may not change.
final class MigrationTests: XCTestCase {
    static let schemaTables = [
        "users", "sessions", "challenges", "channels", "membership_statements", "channel_members",
        "channel_keys", "channel_key_copies", "messages",
    ]

    private func emptyDatabase() throws -> PostgresConnection {
        try PostgresConnection(connectionString: TestDatabase.makeDatabase(migrated: false))
    }

    private func tables(_ connection: PostgresConnection) throws -> Set<String> {
        Set(try connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        ).rows.map { try $0.string(0) })
    }

    private func recordedVersions(_ connection: PostgresConnection) throws -> [Int] {
        try connection.execute("SELECT version FROM schema_migrations ORDER BY version").rows.map { try $0.int(0) }
    }

    private func tableExists(_ name: String, _ connection: PostgresConnection) throws -> Bool {
        try XCTUnwrap(connection.execute("SELECT to_regclass($1) IS NOT NULL", [.text(name)]).first).bool(0)
    }

    private func assertReport(_ report: MigrationReport, applied: [Int], alreadyApplied: [Int], unknown: [Int],
                              file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(report.applied, applied, "applied", file: file, line: line)
        XCTAssertEqual(report.alreadyApplied, alreadyApplied, "alreadyApplied", file: file, line: line)
        XCTAssertEqual(report.unknown, unknown, "unknown", file: file, line: line)
    }

    // MARK: - Running

    func testFirstRunAppliesAllAndSecondRunNothing() throws {
        let migrations = try TestDatabase.migrations()
        let versions = migrations.map(\.version)
        XCTAssertEqual(versions.first, 1)
        XCTAssertEqual(versions, versions.sorted())
        let connection = try emptyDatabase()
        XCTAssertTrue(try tables(connection).isEmpty, "the database starts empty")

        let runner = MigrationRunner(migrations: migrations)
        let first = try runner.run(on: connection)
        assertReport(first, applied: versions, alreadyApplied: [], unknown: [])

        let second = try runner.run(on: connection)
        assertReport(second, applied: [], alreadyApplied: versions, unknown: [])

        // One row per file, with its name and the checksum of its text.
        let rows = try connection.execute(
            "SELECT version, name, checksum, applied_at <= now() FROM schema_migrations ORDER BY version"
        ).rows
        XCTAssertEqual(rows.count, migrations.count)
        for (row, migration) in zip(rows, migrations) {
            XCTAssertEqual(try row.int(0), migration.version)
            XCTAssertEqual(try row.string(1), migration.name)
            XCTAssertEqual(try row.string(2), try connection.execute("SELECT md5($1)", [.text(migration.sql)]).first?.string(0))
            XCTAssertTrue(try row.bool(3))
        }

        let present = try tables(connection)
        for table in Self.schemaTables {
            XCTAssertTrue(present.contains(table), "table \(table) is missing; present: \(present.sorted())")
        }
        XCTAssertTrue(present.contains("schema_migrations"))
    }

    func testVersionsRecordedByANewerRelayAreReportedAsUnknown() throws {
        let connection = try emptyDatabase()
        let migrations = try TestDatabase.migrations()
        try MigrationRunner(migrations: migrations).run(on: connection)
        try connection.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES (9000, 'future', 'x')")
        let report = try MigrationRunner(migrations: migrations).run(on: connection)
        assertReport(report, applied: [], alreadyApplied: migrations.map(\.version), unknown: [9000])
        XCTAssertEqual(try recordedVersions(connection), migrations.map(\.version) + [9000])
    }

    func testFourRunnersAtOnceApplyEachMigrationOnce() throws {
        let connectionString = try TestDatabase.makeDatabase(migrated: false)
        let migrations = try TestDatabase.migrations()
        let versions = migrations.map(\.version)
        let outcomes = onThreads(4) { _ in
            let connection = try PostgresConnection(connectionString: connectionString)
            return try MigrationRunner(migrations: migrations).run(on: connection)
        }
        let reports = try outcomes.map { try $0.get() }
        XCTAssertEqual(reports.count, 4)
        let appliers = reports.filter { !$0.applied.isEmpty }
        XCTAssertEqual(appliers.count, 1, "reports: \(reports)")
        XCTAssertEqual(appliers.first?.applied, versions)
        for report in reports where report.applied.isEmpty {
            XCTAssertEqual(report.alreadyApplied, versions)
        }
        let connection = try PostgresConnection(connectionString: connectionString)
        XCTAssertEqual(try recordedVersions(connection), versions)
        XCTAssertTrue(try tables(connection).isSuperset(of: Self.schemaTables))
    }

    func testEditedMigrationIsRefused() throws {
        let connection = try emptyDatabase()
        let migrations = try TestDatabase.migrations()
        try MigrationRunner(migrations: migrations).run(on: connection)
        let original = try XCTUnwrap(migrations.first)
        let edited = Migration(version: original.version, name: original.name,
                               sql: original.sql + "\nCREATE TABLE sneaked_in (x int);\n")
        let error = try XCTUnwrap(storeError { try MigrationRunner(migrations: [edited]).run(on: connection) })
        XCTAssertEqual(error.code, .migrationFailed)
        XCTAssertFalse(try tableExists("sneaked_in", connection))
        XCTAssertEqual(try recordedVersions(connection), migrations.map(\.version))
        // The unedited files still run cleanly afterwards.
        XCTAssertEqual(try MigrationRunner(migrations: migrations).run(on: connection).alreadyApplied,
                       migrations.map(\.version))
    }

    func testFailingMigrationLeavesNothingBehind() throws {
        let connection = try emptyDatabase()
        let migrations = try TestDatabase.migrations()
        try MigrationRunner(migrations: migrations).run(on: connection)
        let failing = Migration(version: 999, name: "broken",
                                sql: "CREATE TABLE t_ok (x int); SELECT * FROM no_such_table;")
        let error = try XCTUnwrap(storeError { try MigrationRunner(migrations: migrations + [failing]).run(on: connection) })
        XCTAssertEqual(error.code, .migrationFailed)
        XCTAssertEqual(error.sqlState, "42P01")
        XCTAssertTrue(error.debugDescription.contains("999"), error.debugDescription)
        XCTAssertFalse(try tableExists("t_ok", connection))
        XCTAssertEqual(try recordedVersions(connection), migrations.map(\.version))
        XCTAssertTrue(connection.isConnected)
    }

    func testFailingMigrationOnAnEmptyDatabaseRollsBackTheEarlierOnesToo() throws {
        let connection = try emptyDatabase()
        let migrations = try TestDatabase.migrations()
        let failing = Migration(version: 999, name: "broken",
                                sql: "CREATE TABLE t_ok (x int); SELECT * FROM no_such_table;")
        let error = try XCTUnwrap(storeError { try MigrationRunner(migrations: migrations + [failing]).run(on: connection) })
        XCTAssertEqual(error.code, .migrationFailed)
        let left = try tables(connection)
        XCTAssertTrue(left.isEmpty, "left behind: \(left.sorted())")
        XCTAssertFalse(try tableExists("schema_migrations", connection))

        // Fixed, the same database migrates from scratch.
        let report = try MigrationRunner(migrations: migrations).run(on: connection)
        XCTAssertEqual(report.applied, migrations.map(\.version))
    }

    func testDatabaseWithURLMigrates() throws {
        let url = try TestDatabase.makeDatabase(migrated: false)
        var configuration = DatabaseConfiguration()
        configuration.url = url
        configuration.migrationsDirectory = TestDatabase.repositoryRoot.appendingPathComponent("migrations")
        let database = try Database(configuration: configuration)
        XCTAssertNil(database.embedded)
        XCTAssertEqual(database.connectionString, url)
        let versions = try TestDatabase.migrations().map(\.version)

        XCTAssertEqual(try database.migrate(configuration: configuration).applied, versions)
        let again = try database.migrate(configuration: configuration)
        XCTAssertEqual(again.applied, [])
        XCTAssertEqual(again.alreadyApplied, versions)
        try database.close()

        let connection = try PostgresConnection(connectionString: url)
        XCTAssertEqual(try recordedVersions(connection), versions)
        XCTAssertTrue(try tables(connection).isSuperset(of: Self.schemaTables))
    }

    func testDatabaseWithBadURLThrowsConnectionFailed() throws {
        var configuration = DatabaseConfiguration()
        configuration.url = "host=/tmp/parley-no-such-dir-\(Fixture.hex().prefix(8)) port=5432 dbname=x"
        XCTAssertEqual(storeError { try Database(configuration: configuration) }?.code, .connectionFailed)
    }

    // MARK: - Loading files

    private func temporaryFolder(_ files: [String: String]) throws -> URL {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-migrations-\(Fixture.hex())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        for (name, text) in files {
            try Data(text.utf8).write(to: folder.appendingPathComponent(name))
        }
        return folder
    }

    func testLoadReadsNumberedFilesInVersionOrderAndIgnoresOthers() throws {
        let folder = try temporaryFolder([
            "0010_tenth.sql": "SELECT 10;",
            "0002_second.sql": "SELECT 2;",
            "0001_first_one.sql": "SELECT 1;",
            "README.md": "not a migration",
            "0003_backup.sql.bak": "SELECT 3;",
            "notes.txt": "x",
        ])
        let loaded = try Migration.load(from: folder)
        XCTAssertEqual(loaded, [
            Migration(version: 1, name: "first_one", sql: "SELECT 1;"),
            Migration(version: 2, name: "second", sql: "SELECT 2;"),
            Migration(version: 10, name: "tenth", sql: "SELECT 10;"),
        ])
    }

    func testLoadRejectsBadlyNamedFiles() throws {
        for name in ["initial.sql", "abc_initial.sql", "0000_zero.sql", "x1_initial.sql", "_initial.sql"] {
            let folder = try temporaryFolder(["0001_good.sql": "SELECT 1;", name: "SELECT 2;"])
            let error = storeError(name) { try Migration.load(from: folder) }
            XCTAssertEqual(error?.code, .migrationFailed, name)
            XCTAssertTrue(error?.detail.contains(name) ?? false, "\(name): \(error?.detail ?? "")")
        }
    }

    func testLoadRejectsDuplicateVersions() throws {
        let folder = try temporaryFolder(["0001_a.sql": "SELECT 1;", "1_b.sql": "SELECT 2;", "0002_c.sql": "SELECT 3;"])
        let error = try XCTUnwrap(storeError { try Migration.load(from: folder) })
        XCTAssertEqual(error.code, .migrationFailed)
        XCTAssertTrue(error.detail.contains("version 1"), error.detail)
    }

    func testLoadOfMissingFolderThrowsMigrationFailed() {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("parley-missing-\(Fixture.hex())")
        XCTAssertEqual(storeError { try Migration.load(from: folder) }?.code, .migrationFailed)
    }

    func testProjectMigrationsLoadFromTheCheckout() throws {
        let migrations = try TestDatabase.migrations()
        XCTAssertEqual(migrations.first?.version, 1)
        XCTAssertEqual(migrations.first?.name, "initial")
        XCTAssertTrue(migrations.first?.sql.contains("CREATE TABLE users") ?? false)
        // The folder found by default, from a binary inside the checkout, holds the same files.
        let binary = TestDatabase.repositoryRoot.appendingPathComponent(".build/debug/parley-server")
        let found = try XCTUnwrap(Migration.defaultDirectory(executable: binary))
        XCTAssertEqual(try Migration.load(from: found), migrations)
    }
}
