import Foundation
import ParleyStore
import ParleyTestSupport
import XCTest

/// The embedded cluster in a data directory of its own (initdb, start, attach, stop,
/// restart), and `parley-server migrate` run end to end on it. Slower than the rest:
/// each test makes a new cluster.
final class EmbeddedPostgresTests: XCTestCase {
    /// A new data directory with a short path (the socket path must fit in 107 bytes),
    /// removed after the test, after stopping whatever cluster was left in it.
    private func makeDataDirectory() -> URL {
        let folder = URL(fileURLWithPath: "/tmp/pe-\(Fixture.hex().prefix(10))")
        addTeardownBlock {
            if FileManager.default.fileExists(atPath: folder.appendingPathComponent("postgres/postmaster.pid").path) {
                // Adopt the cluster a failed test left running, and stop it.
                let adopter = EmbeddedPostgres(configuration: .init(dataDirectory: folder))
                _ = try? adopter.start()
                try? adopter.stop()
            }
            try? FileManager.default.removeItem(at: folder)
        }
        return folder
    }

    private func modificationDate(_ url: URL) throws -> Date {
        try XCTUnwrap(FileManager.default.attributesOfItem(atPath: url.path)[.modificationDate] as? Date)
    }

    /// Processes whose command line names the cluster folder (the postmaster and its children).
    private func postgresProcesses(for cluster: URL) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { entry -> String? in
            guard Int32(entry) != nil,
                  let data = FileManager.default.contents(atPath: "/proc/\(entry)/cmdline"), !data.isEmpty else { return nil }
            let commandLine = String(decoding: data.map { $0 == 0 ? UInt8(ascii: " ") : $0 }, as: UTF8.self)
            return commandLine.contains(cluster.path) && commandLine.contains("postgres") ? "\(entry): \(commandLine)" : nil
        }
    }

    private func assertStopped(_ cluster: URL, connectionString: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.appendingPathComponent("postmaster.pid").path),
                       "postmaster.pid is still there", file: file, line: line)
        XCTAssertFalse(FileManager.default.fileExists(atPath: cluster.appendingPathComponent(".s.PGSQL.5432").path),
                       "the socket is still there", file: file, line: line)
        XCTAssertEqual(postgresProcesses(for: cluster), [], "postgres still runs for \(cluster.path)", file: file, line: line)
        let error = storeError(file: file, line: line) { try PostgresConnection(connectionString: connectionString) }
        XCTAssertEqual(error?.code, .connectionFailed, file: file, line: line)
    }

    func testInitStartAttachStopAndRestartKeepTheData() throws {
        let folder = makeDataDirectory()
        var configuration = EmbeddedPostgres.Configuration(dataDirectory: folder)
        configuration.database = "lifecycle"
        let owner = EmbeddedPostgres(configuration: configuration)
        XCTAssertEqual(owner.clusterDirectory.path, folder.path + "/postgres")

        let connectionString = try owner.start()
        XCTAssertEqual(connectionString, owner.connectionString)
        XCTAssertTrue(owner.ownsServer)
        let versionFile = owner.clusterDirectory.appendingPathComponent("PG_VERSION")
        XCTAssertEqual(try String(contentsOf: versionFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines), "15")
        let initialised = try modificationDate(versionFile)

        do {
            let connection = try PostgresConnection(connectionString: connectionString)
            XCTAssertEqual(try connection.execute("SHOW synchronous_commit").first?.string(0), "on")
            XCTAssertEqual(try connection.execute("SHOW fsync").first?.string(0), "on")
            XCTAssertEqual(try connection.execute("SHOW listen_addresses").first?.string(0), "")
            XCTAssertEqual(try connection.execute("SELECT current_database(), current_user").first?.string(0), "lifecycle")
            XCTAssertEqual(try connection.execute("SELECT current_user::text").first?.string(0), "parley")
            try connection.executeScript("CREATE TABLE kept (note text)")
            try connection.execute("INSERT INTO kept VALUES ($1)", ["survives a restart"])
        }

        // A second instance on the same folder attaches; its stop leaves the server running.
        let visitor = EmbeddedPostgres(configuration: configuration)
        XCTAssertEqual(try visitor.start(), connectionString)
        XCTAssertFalse(visitor.ownsServer)
        XCTAssertEqual(try PostgresConnection(connectionString: visitor.connectionString)
            .execute("SELECT count(*) FROM kept").first?.int(0), 1)
        try visitor.stop()
        XCTAssertEqual(try PostgresConnection(connectionString: connectionString)
            .execute("SELECT note FROM kept").first?.string(0), "survives a restart")

        try owner.stop()
        XCTAssertFalse(owner.ownsServer)
        assertStopped(owner.clusterDirectory, connectionString: connectionString)

        // A new instance starts the same cluster again: no initdb, the data is there.
        let restarted = EmbeddedPostgres(configuration: configuration)
        XCTAssertEqual(try restarted.start(), connectionString)
        XCTAssertTrue(restarted.ownsServer)
        XCTAssertEqual(try modificationDate(versionFile), initialised, "initdb ran again")
        XCTAssertEqual(try PostgresConnection(connectionString: connectionString)
            .execute("SELECT note FROM kept").first?.string(0), "survives a restart")
        try restarted.stop()
        assertStopped(restarted.clusterDirectory, connectionString: connectionString)
    }

    // MARK: - parley-server migrate

    /// The `parley-server` binary built from this checkout: the one beside the test bundle
    /// if there is one, else the newest in any `.build*/debug` folder of the checkout.
    private func serverBinary() throws -> URL {
        let fileManager = FileManager.default
        let bundleFolder = URL(fileURLWithPath: CommandLine.arguments.first ?? "")
            .resolvingSymlinksInPath().deletingLastPathComponent()
        var candidates = [bundleFolder.appendingPathComponent("parley-server")]
        if let bundle = Bundle.main.executableURL {
            candidates.append(bundle.resolvingSymlinksInPath().deletingLastPathComponent().appendingPathComponent("parley-server"))
        }
        if let beside = candidates.first(where: { fileManager.isExecutableFile(atPath: $0.path) }) {
            return beside
        }
        let root = TestDatabase.repositoryRoot
        let builds = ((try? fileManager.contentsOfDirectory(atPath: root.path)) ?? []).filter { $0.hasPrefix(".build") }
        let found = builds.map { root.appendingPathComponent($0).appendingPathComponent("debug/parley-server") }
            .filter { fileManager.isExecutableFile(atPath: $0.path) }
            .max { (try? modificationDate($0)) ?? .distantPast < (try? modificationDate($1)) ?? .distantPast }
        return try XCTUnwrap(found, "no parley-server binary beside \(bundleFolder.path) or in \(root.path)/.build*/debug")
    }

    private func runMigrate(_ binary: URL, dataDirectory: URL) throws -> (status: Int32, stderr: String) {
        let errorFile = dataDirectory.deletingLastPathComponent()
            .appendingPathComponent("\(dataDirectory.lastPathComponent)-stderr-\(Fixture.hex().prefix(6)).txt")
        XCTAssertTrue(FileManager.default.createFile(atPath: errorFile.path, contents: nil))
        defer { try? FileManager.default.removeItem(at: errorFile) }
        let errorHandle = try FileHandle(forWritingTo: errorFile)

        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "PARLEY_DATABASE_URL")
        environment.removeValue(forKey: "PARLEY_MIGRATIONS_DIR")
        environment["PARLEY_DATA_DIR"] = dataDirectory.path
        let process = Process()
        process.executableURL = binary
        process.arguments = ["migrate"]
        process.environment = environment
        process.currentDirectoryURL = TestDatabase.repositoryRoot
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errorHandle
        try process.run()
        process.waitUntilExit()
        try errorHandle.close()
        let text = try String(contentsOf: errorFile, encoding: .utf8)
        return (process.terminationStatus, text)
    }

    func testParleyServerMigrateEndToEnd() throws {
        let binary = try serverBinary()
        let folder = makeDataDirectory()
        let cluster = folder.appendingPathComponent("postgres")
        let versions = try TestDatabase.migrations().map(\.version)
        let connectionString = EmbeddedPostgres(configuration: .init(dataDirectory: folder)).connectionString

        let first = try runMigrate(binary, dataDirectory: folder)
        XCTAssertEqual(first.status, 0, first.stderr)
        XCTAssertTrue(first.stderr.contains("event=migrations.applied msg=\"applied migrations \(versions.map(String.init).joined(separator: ","))\""),
                      first.stderr)
        XCTAssertTrue(first.stderr.contains(cluster.path), first.stderr)
        assertStopped(cluster, connectionString: connectionString)

        let second = try runMigrate(binary, dataDirectory: folder)
        XCTAssertEqual(second.status, 0, second.stderr)
        XCTAssertTrue(second.stderr.contains("schema up to date (\(versions.count) migrations applied earlier)"), second.stderr)
        XCTAssertFalse(second.stderr.contains("applied migrations"), second.stderr)
        assertStopped(cluster, connectionString: connectionString)

        // What the binary migrated is in the cluster's `parley` database.
        let check = EmbeddedPostgres(configuration: .init(dataDirectory: folder))
        try check.start()
        do {
            let connection = try PostgresConnection(connectionString: check.connectionString)
            XCTAssertEqual(try connection.execute("SELECT version FROM schema_migrations ORDER BY version").rows
                .map { try $0.int(0) }, versions)
            XCTAssertEqual(try connection.execute("SELECT to_regclass('messages') IS NOT NULL").first?.bool(0), true)
        }
        try check.stop()
        assertStopped(cluster, connectionString: connectionString)
    }
}
