import Foundation

/// Where the relay's PostgreSQL comes from: a server named by URL, or (the default) the
/// embedded cluster in the data directory.
public struct DatabaseConfiguration: Sendable {
    /// A libpq URL or key=value string (`PARLEY_DATABASE_URL`); nil means embedded.
    public var url: String?
    /// The data directory of the embedded cluster (`PARLEY_DATA_DIR`, default `.parley`).
    public var dataDirectory: URL = URL(fileURLWithPath: ".parley")
    /// The migrations folder (`PARLEY_MIGRATIONS_DIR`); found automatically when nil.
    public var migrationsDirectory: URL?

    public init() {}
}

/// An open database: its connection string and, when embedded, the cluster to stop.
public final class Database {
    public let connectionString: String
    public let embedded: EmbeddedPostgres?

    /// Starts the embedded cluster when no URL is configured and checks that the server
    /// answers. Stop it with `close()`.
    public init(configuration: DatabaseConfiguration) throws {
        if let url = configuration.url, !url.isEmpty {
            connectionString = url
            embedded = nil
        } else {
            let cluster = EmbeddedPostgres(configuration: .init(dataDirectory: configuration.dataDirectory))
            connectionString = try cluster.start()
            embedded = cluster
        }
        _ = try PostgresConnection(connectionString: connectionString)
    }

    /// Applies the migrations of the configured (or default) folder.
    public func migrate(configuration: DatabaseConfiguration) throws -> MigrationReport {
        guard let folder = configuration.migrationsDirectory ?? Migration.defaultDirectory() else {
            throw StoreError(.migrationFailed, detail: """
                no migrations folder found: run from the checkout, or set PARLEY_MIGRATIONS_DIR
                """)
        }
        let runner = MigrationRunner(migrations: try Migration.load(from: folder))
        return try runner.run(on: PostgresConnection(connectionString: connectionString, applicationName: "parley-migrate"))
    }

    /// Refuses a server that acknowledges commits before they are durable: the relay
    /// promises that an ok means the row is committed, which `synchronous_commit = off`
    /// breaks (a crash loses the last transactions it already confirmed).
    public func requireDurableCommits() throws {
        let connection = try PostgresConnection(connectionString: connectionString, applicationName: "parley-check")
        let setting = try connection.execute("SELECT current_setting('synchronous_commit'), current_setting('fsync')")
        guard let row = setting.first else { return }
        let synchronousCommit = try row.string(0), fsync = try row.string(1)
        guard synchronousCommit != "off", fsync != "off" else {
            throw StoreError(.unsafeServerSettings, detail: """
                PostgreSQL has synchronous_commit = \(synchronousCommit) and fsync = \(fsync): the relay acknowledges \
                a message only once it is durable, so it refuses to run on a server that may lose committed \
                transactions. Set both to on.
                """)
        }
    }

    /// Stops the embedded cluster if this process started it.
    public func close() throws {
        try embedded?.stop()
    }
}
