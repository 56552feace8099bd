import Foundation
import ParleyStore

/// Real PostgreSQL for the tests, got the way the relay gets its default database: an
/// embedded cluster, here in `/tmp/parley-test-<uid>` (or `PARLEY_TEST_DATA_DIR`), shared by
/// every test process on the machine and left running between runs so suites start fast
/// (`make test-db-stop` stops it). Each test gets a database of its own, named after its
/// process, so concurrent test runs never see each other's rows.
///
/// Set `PARLEY_TEST_DATABASE_URL` (a libpq URL or key=value string, whose user may create
/// databases) to use another server instead.
public enum TestDatabase {
    private static let lock = NSLock()
    nonisolated(unsafe) private static var administration: String?   // guarded by lock
    nonisolated(unsafe) private static var counter = 0                // guarded by lock
    nonisolated(unsafe) private static var cluster: EmbeddedPostgres? // guarded by lock

    /// The repository checkout these tests were built from.
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The project's migrations, read from the checkout.
    public static func migrations() throws -> [Migration] {
        try Migration.load(from: repositoryRoot.appendingPathComponent("migrations"))
    }

    /// Creates an empty database and returns its connection string; with `migrated`,
    /// the project's migrations are applied first.
    public static func makeDatabase(migrated: Bool = true) throws -> String {
        let (adminConnection, name) = try lock.withLock { () throws -> (String, String) in
            let admin = try administrationConnectionString()
            counter += 1
            return (admin, "parley_test_\(getpid())_\(counter)")
        }
        let admin = try PostgresConnection(connectionString: adminConnection)
        try admin.executeScript("DROP DATABASE IF EXISTS \(name)")
        try admin.executeScript("CREATE DATABASE \(name)")
        let connectionString = try withDatabase(name, adminConnection)
        if migrated {
            try MigrationRunner(migrations: migrations()).run(on: PostgresConnection(connectionString: connectionString))
        }
        return connectionString
    }

    /// The same server with another database, for key=value strings and URLs alike.
    static func withDatabase(_ name: String, _ connectionString: String) throws -> String {
        guard connectionString.hasPrefix("postgres://") || connectionString.hasPrefix("postgresql://") else {
            return connectionString + " dbname=\(name)"
        }
        guard var components = URLComponents(string: connectionString) else {
            throw StoreError(.connectionFailed, detail: "PARLEY_TEST_DATABASE_URL is not a valid URL")
        }
        components.path = "/" + name
        guard let url = components.string else {
            throw StoreError(.connectionFailed, detail: "PARLEY_TEST_DATABASE_URL is not a valid URL")
        }
        return url
    }

    /// A connection string to the maintenance database `postgres`, starting the cluster
    /// the first time. Called with `lock` held.
    private static func administrationConnectionString() throws -> String {
        if let administration { return administration }
        let connectionString: String
        if let url = ProcessInfo.processInfo.environment["PARLEY_TEST_DATABASE_URL"], !url.isEmpty {
            connectionString = url
        } else {
            let folder = ProcessInfo.processInfo.environment["PARLEY_TEST_DATA_DIR"] ?? "/tmp/parley-test-\(geteuid())"
            var configuration = EmbeddedPostgres.Configuration(dataDirectory: URL(fileURLWithPath: folder))
            configuration.database = "postgres"
            // Test databases come and go by the hundred; the cluster needs room for
            // every test's connections plus concurrent runs.
            configuration.settings = ["max_connections = 300"]
            let embedded = EmbeddedPostgres(configuration: configuration)
            connectionString = try embedded.start()
            cluster = embedded
        }
        try dropDatabasesOfDeadProcesses(PostgresConnection(connectionString: connectionString))
        administration = connectionString
        return connectionString
    }

    /// Test databases of earlier runs are dropped once their process is gone.
    private static func dropDatabasesOfDeadProcesses(_ admin: PostgresConnection) throws {
        let names = try admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'parley\\_test\\_%'")
            .rows.map { try $0.string(0) }
        for name in names {
            let parts = name.split(separator: "_")
            guard parts.count == 4, let pid = Int32(parts[2]) else { continue }
            if pid != getpid() && kill(pid, 0) != 0 && errno == ESRCH {
                try? admin.executeScript("DROP DATABASE IF EXISTS \(name) WITH (FORCE)")
            }
        }
    }
}
