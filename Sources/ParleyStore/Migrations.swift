import Foundation

/// One numbered SQL file of `migrations/`, e.g. `0001_initial.sql`.
public struct Migration: Sendable, Equatable {
    public let version: Int
    public let name: String
    public let sql: String

    public init(version: Int, name: String, sql: String) {
        self.version = version
        self.name = name
        self.sql = sql
    }

    /// Reads every `NNNN_name.sql` of a folder, in version order. Other files are
    /// ignored; two files with one version, or a version below 1, are an error.
    public static func load(from directory: URL) throws -> [Migration] {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        } catch {
            throw StoreError(.migrationFailed, detail: "cannot read the migrations folder \(directory.path): \(error)")
        }
        var migrations: [Migration] = []
        for fileName in names where fileName.hasSuffix(".sql") {
            let stem = fileName.dropLast(4)
            guard let underscore = stem.firstIndex(of: "_"),
                  let version = Int(stem[..<underscore]), version >= 1,
                  stem[..<underscore].allSatisfy(\.isASCII)
            else {
                throw StoreError(.migrationFailed, detail: "\(fileName): a migration is named NNNN_name.sql")
            }
            let url = directory.appendingPathComponent(fileName)
            let sql: String
            do {
                sql = try String(contentsOf: url, encoding: .utf8)
            } catch {
                throw StoreError(.migrationFailed, detail: "cannot read \(url.path): \(error)")
            }
            migrations.append(Migration(version: version, name: String(stem[stem.index(after: underscore)...]), sql: sql))
        }
        migrations.sort { $0.version < $1.version }
        for (earlier, later) in zip(migrations, migrations.dropFirst()) where earlier.version == later.version {
            throw StoreError(.migrationFailed, detail: "two migrations have version \(later.version)")
        }
        return migrations
    }

    /// Where the migrations are when no folder is configured (`ResourceFolder.locate`).
    public static func defaultDirectory(executable: URL = URL(fileURLWithPath: CommandLine.arguments.first ?? ".")) -> URL? {
        ResourceFolder.locate("migrations", executable: executable)
    }
}

/// What one run of the migrations did.
public struct MigrationReport: Sendable, Equatable {
    /// Versions applied by this run, ascending.
    public var applied: [Int]
    /// Versions that were already applied before this run.
    public var alreadyApplied: [Int]
    /// Versions recorded in the database that this binary has no file for (a newer
    /// relay migrated it); they are left alone.
    public var unknown: [Int]
}

/// Applies migrations: all pending ones in one transaction, under an advisory lock, each
/// recorded in `schema_migrations` with a checksum. A second run is a no-op; two runners
/// at once are safe (the second waits for the lock and then finds nothing to do); a file
/// changed after it was applied is refused.
public struct MigrationRunner: Sendable {
    /// `pg_advisory_xact_lock` key: the ASCII bytes of "parley" as a number.
    public static let advisoryLockKey: Int64 = 0x7061_726C_6579

    public let migrations: [Migration]

    public init(migrations: [Migration]) {
        self.migrations = migrations
    }

    @discardableResult
    public func run(on connection: PostgresConnection) throws -> MigrationReport {
        try connection.transaction {
            try connection.execute("SELECT pg_advisory_xact_lock($1)", [.integer(Self.advisoryLockKey)])
            try connection.executeScript("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version     integer PRIMARY KEY,
                    name        text NOT NULL,
                    checksum    text NOT NULL,
                    applied_at  timestamptz NOT NULL DEFAULT now()
                )
                """)
            var recorded: [Int: String] = [:]
            for row in try connection.execute("SELECT version, checksum FROM schema_migrations").rows {
                recorded[try row.int(0)] = try row.string(1)
            }
            var report = MigrationReport(applied: [], alreadyApplied: [], unknown: [])
            for migration in migrations {
                let checksum = try connection.execute("SELECT md5($1)", [.text(migration.sql)]).first?.string(0) ?? ""
                if let applied = recorded.removeValue(forKey: migration.version) {
                    guard applied == checksum else {
                        throw StoreError(.migrationFailed, detail: """
                            migration \(migration.version) (\(migration.name)) differs from the one applied; \
                            add a new migration instead of editing an applied one
                            """)
                    }
                    report.alreadyApplied.append(migration.version)
                    continue
                }
                do {
                    try connection.executeScript(migration.sql)
                } catch var error as StoreError {
                    error.code = .migrationFailed
                    error.detail = "migration \(migration.version) (\(migration.name)): \(error.detail)"
                    throw error
                }
                try connection.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    [.int(migration.version), .text(migration.name), .text(checksum)]
                )
                report.applied.append(migration.version)
            }
            report.unknown = recorded.keys.sorted()
            return report
        }
    }
}
